"""The trainer's validation split: held-out samples are never trained on, and the test split is
read once, after the last epoch (an instrumented run of the real trainer, stopped and resumed)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from _launch import REPO, run_group

TINY = "configs/tiny/mnist1d_2rank.json"
SETS = (
    "trainer.dataset.train_size=1200",
    "trainer.dataset.val_size=200",
    "trainer.epochs=4",
    "trainer.checkpoint_every=2",
)


def split_check(tmp_path, name: str, *extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    sets = [a for s in SETS for a in ("--set", s)]
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, str(REPO / "tests" / "scripts" / "split_check.py"), str(out)]
    cmd += ["--config", TINY, *sets, "--set", f"trainer.output_dir={tmp_path / 'run'}", *extra]
    proc = run_group(cmd, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(700)
def test_held_out_samples_are_never_trained_and_test_is_read_once_at_the_end(tmp_path):
    first = split_check(tmp_path, "first", "--stop-after", "2")
    assert first["test_reads"] == []  # epochs 1-2: the test split is not touched
    second = split_check(tmp_path, "second", "--resume", "auto")
    # Epochs 3-4 after the resume: every test sample read exactly once, during the last epoch
    # (3 epochs logged), and the last row carries the result.
    assert second["test_reads"] == [3] * 200
    assert len(set(second["test"])) == 200
    trained = set(first["trained"]) | set(second["trained"])
    val, test = set(first["val"]), set(first["test"])
    assert len(val) == 200 and len(trained) > 900
    assert not trained & val and not trained & test and not val & test
    # the same split after the resume
    assert second["val"] == first["val"] and second["val_indices"] == first["val_indices"]
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all("test_accuracy" not in r for r in rows[:-1])
    assert 0 <= rows[-1]["test_accuracy"] <= 1 and rows[-1]["test_loss"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["val_is_test"] is False and summary["val_size"] == 200
