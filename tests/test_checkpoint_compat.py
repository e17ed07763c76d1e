"""A checkpoint written by an earlier version still resumes and finishes.

``tests/data/resume_v1`` holds a run of ``run.json`` (MNIST-1D, a 4+4-channel CNN, TwoPhaseLR with
``probe.every: 1``) stopped by SIGTERM two micro-batches into epoch 7, written by the code of
before the checkpoint state became a map of parts (issue 23): epoch 6 decayed the LR (x0.5), so
the schedule is in its convergence phase with ``h_prev = 0``; both probes hold a warm-start
vector; the checkpoint is mid-epoch (each rank's loss sums and RNG state). Regenerate only if
the format changes on purpose and old checkpoints are no longer meant to resume:
``DS_TWOPHASE_SIGNAL_AT=7:1 python -m ds_twophase.train --config tests/data/resume_v1/run.json
--set trainer.output_dir=<dir>`` and keep ``metrics.jsonl``, ``config.json``,
``checkpoints/latest`` and the ``epoch0006+mb000002`` checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _launch import REPO, run_plain
from _runs import read_metrics

FIXTURE = REPO / "tests" / "data" / "resume_v1"
CONFIG = FIXTURE / "run.json"
TAG = "epoch0006+mb000002"


def copy_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", out)
    return out


def resume(out: Path, *command: object):
    """``python *command`` on the fixture's config into ``out`` with ``--resume auto``."""
    flags = ["--config", CONFIG, "--set", f"trainer.output_dir={out}", "--resume", "auto"]
    return run_plain([*command, *flags])


@pytest.mark.timeout(300)
def test_old_checkpoint_restores_every_part(tmp_path):
    out = copy_run(tmp_path)
    report = tmp_path / "state.json"
    proc = resume(out, "tests/scripts/resume_state.py", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    ckpt = out / "checkpoints" / TAG
    saved = json.loads((ckpt / "ds_twophase.json").read_text())
    engine = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)
    assert got["epoch"] == 6 and got["global_steps"] == engine["global_steps"] == 13
    # the schedule: convergence phase, one decay (LR 2 -> 1), h_prev reset by that decay
    assert got["scheduler"] == engine["lr_scheduler"]
    assert got["scheduler"]["decision"]["scale"] == 0.5 and got["lr"] == 1.0
    # both probes: the fixed indices, the draw counter and their own warm-start vectors
    for name in ("probe", "probe_every"):
        vector = np.load(ckpt / f"{name}_vector.npy", allow_pickle=False)
        assert got[name]["indices"] == saved[name]["indices"]
        assert got[name]["draws"] == saved[name]["draws"]
        assert np.array_equal(np.asarray(got[name]["vector"], dtype=vector.dtype), vector)
    # the mid-epoch progress: two micro-batches done, their loss sums and the RNG state
    partial = saved["partial"]
    rng = np.load(ckpt / "rng_rank0.npy", allow_pickle=False)
    assert got["progress"] == {
        "micro_batches": 2,
        "loss_sum": partial["loss_sums"][0],
        "finite": partial["finite"][0],
        "loss_squares": partial["loss_squares"][0],
        "rng_state": rng.tolist(),
    }


@pytest.mark.timeout(300)
def test_old_checkpoint_resumes_and_finishes(tmp_path):
    out = copy_run(tmp_path)
    before = read_metrics(out)
    assert [r["epoch"] for r in before] == [1, 2, 3, 4, 5, 6]
    proc = resume(out, "-m", "ds_twophase.train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: 2 micro-batch(es) into epoch 7; continuing after epoch 6 from" in proc.stdout
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(1, 10))
    assert rows[:6] == before
    # The schedule carried on where it stopped: convergence, probing every epoch, at the decayed
    # LR (epoch 7 cannot decay again: h_prev was reset by epoch 6's decay).
    resumed = rows[6:]
    assert all(r["phase"] == "convergence" and r["hmax"] is not None for r in resumed)
    assert resumed[0]["decision"] == "keep" and resumed[0]["lr"] == 1.0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 9
