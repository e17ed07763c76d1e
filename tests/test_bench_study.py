"""bench/study.py: the accuracy study's stale-run refusal, duplicate linking and intervals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _launch import REPO

sys.path.insert(0, str(REPO / "bench"))
from study import (  # noqa: E402
    RunSpec,
    StaleRun,
    bootstrap_ci,
    gap_closed_ci,
    link_duplicates,
    run_all,
    run_status,
)

from ds_twophase.config import load_config  # noqa: E402

TINY = REPO / "configs" / "tiny" / "mnist1d_2rank.json"


def fake_run(spec: RunSpec, work, finished: bool) -> None:
    """What the trainer leaves in a run directory: the resolved config (and the summary)."""
    out = work / spec.name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(load_config(spec.config, spec.overrides(work))))
    if finished:
        (out / "summary.json").write_text("{}")


def test_a_run_of_another_config_is_refused(tmp_path):
    spec = RunSpec("grid/a", TINY, ["optimizer.params.lr=0.5", "trainer.seed=0"])
    assert run_status(spec, tmp_path) == "new"
    fake_run(spec, tmp_path, finished=False)
    assert run_status(spec, tmp_path) == "partial"
    (tmp_path / "grid" / "a" / "summary.json").write_text("{}")
    assert run_status(spec, tmp_path) == "done"
    # bookkeeping keys may differ (checkpoint cadence, progress bar)
    relaxed = RunSpec("grid/a", TINY, [*spec.sets, "trainer.checkpoint_every=1"])
    assert run_status(relaxed, tmp_path) == "done"
    changed = RunSpec("grid/a", TINY, ["optimizer.params.lr=0.25", "trainer.seed=0"])
    with pytest.raises(StaleRun, match=r"optimizer.params.lr: 0.5 -> 0.25"):
        run_status(changed, tmp_path)
    # the runner refuses before training anything
    with pytest.raises(StaleRun):
        run_all([changed], tmp_path, jobs=1)
    assert not (tmp_path / "grid" / "a.log").exists()


def test_identical_configs_share_one_run(tmp_path):
    a = RunSpec("final/s1", TINY, ["trainer.seed=1"])
    b = RunSpec(
        "studies/probe/200/s1", TINY, ["scheduler.params.decay_factor=0.5", "trainer.seed=1"]
    )
    c = RunSpec(
        "studies/probe/100/s1", TINY, ["scheduler.params.decay_factor=0.3", "trainer.seed=1"]
    )
    target = link_duplicates([a, b, c], tmp_path)
    assert target == {a.name: a, b.name: a, c.name: c}  # the tiny config's decay_factor is 0.5
    assert (tmp_path / b.name).is_symlink()
    assert (tmp_path / b.name).resolve() == (tmp_path / a.name).resolve()
    assert run_status(b, tmp_path) == "alias"


def test_bootstrap_intervals_known_cases():
    assert bootstrap_ci([0.9] * 5) == (0.9, 0.9)
    x = np.random.default_rng(1).normal(size=400)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std() / np.sqrt(len(x))  # the normal approximation, good at n = 400
    assert lo == pytest.approx(x.mean() - half, abs=0.02)
    assert hi == pytest.approx(x.mean() + half, abs=0.02)
    # a row equal to the small batch on every seed closes the whole gap
    gap, glo, ghi = gap_closed_ci([0.99] * 5, [0.97, 0.98, 0.975, 0.97, 0.98], [0.99] * 5)
    assert gap == pytest.approx(1.0) and glo == pytest.approx(1.0) and ghi == pytest.approx(1.0)
