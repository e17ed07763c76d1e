"""The epoch loss's standard error (``train_loss_se``): from sums, and on 2 real ranks."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from ds_twophase.analysis.stats import standard_error_from_sums

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from _launch import run_deepspeed  # noqa: E402


@pytest.mark.parametrize(
    "values",
    [[1.0, 2.0, 4.0], [0.3, 0.3, 0.3, 0.3], [2.5, -1.0], [1e3 + 1e-3 * i for i in range(50)]],
)
def test_standard_error_from_sums_is_the_sample_std_over_root_n(values):
    se = standard_error_from_sums(sum(values), sum(v * v for v in values), len(values))
    expected = statistics.stdev(values) / math.sqrt(len(values))
    assert se == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_standard_error_of_one_value_is_unknown():
    assert math.isnan(standard_error_from_sums(2.0, 4.0, 1))
    assert math.isnan(standard_error_from_sums(0.0, 0.0, 0))


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_loss_se_over_two_ranks_with_uneven_counts(tmp_path):
    # micro-batch 2 of rank 1 is NaN and skipped: rank 0 contributes 12 losses, rank 1 11
    proc = run_deepspeed(
        ["tests/scripts/epoch_loss_se.py", "--out", tmp_path],
        env={"DS_TWOPHASE_NAN_LOSS": "1:2:1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["losses"]) for r in ranks] == [12, 11]
    losses = ranks[0]["losses"] + ranks[1]["losses"]
    direct_se = statistics.stdev(losses) / math.sqrt(len(losses))
    for r in ranks:
        assert r["skipped"] == 1
        assert r["mean"] == pytest.approx(statistics.fmean(losses), rel=1e-12)
        assert r["se"] == pytest.approx(direct_se, rel=1e-9)
    assert ranks[0]["se"] == ranks[1]["se"]
