"""The trainer end to end: 2 ranks through the deepspeed launcher, one process, stop and resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _launch import run_deepspeed, run_plain
from _runs import RunDir, without_timing

# The tiny run with 200 of 1200 training samples held out for validation (1000 trained on, as in
# the config).
VAL_SETS = ("--set", "trainer.dataset.train_size=1200", "--set", "trainer.dataset.val_size=200")


def expected_val_digest() -> str:
    """The held-out indices' digest, computed here in one process without the trainer."""
    from ds_twophase.data import DatasetConfig, build_datasets
    from ds_twophase.trainer.summary import indices_digest

    cfg = DatasetConfig(name="mnist1d", train_size=1200, test_size=200, val_size=200)
    return indices_digest(build_datasets(cfg).val_indices)


def check_summary(out: Path, rows: list[dict]) -> dict:
    """summary.json agrees with metrics.jsonl and holds the run's split and identity."""
    summary = json.loads((out / "summary.json").read_text())
    decisions = [r["decision"] for r in rows]
    assert summary["epochs"] == rows[-1]["epoch"]
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["test_loss"] == rows[-1]["test_loss"]
    assert all("test_accuracy" not in r for r in rows[:-1])
    best = max(rows, key=lambda r: r["val_accuracy"])
    assert (summary["best_val_accuracy"], summary["best_val_epoch"]) == (
        best["val_accuracy"],
        best["epoch"],
    )
    assert summary["plateau_epoch"] == rows[decisions.index("plateau")]["epoch"]
    assert summary["switch_epoch"] == rows[decisions.index("switch")]["epoch"]
    assert summary["switch_forced"] is False and summary["ended_in_exploration"] is False
    assert summary["decay_epochs"] == [r["epoch"] for r in rows if r["decision"] == "decay"]
    assert summary["final_lr"] == rows[-1]["lr"]
    wall = sum(r["epoch_seconds"] for r in rows)
    assert summary["wall_seconds"] == pytest.approx(wall)
    assert summary["probe_share"] == pytest.approx(sum(r["probe_seconds"] for r in rows) / wall)
    assert summary["val_size"] == 200 and summary["val_is_test"] is False
    assert summary["val_indices_digest"] == expected_val_digest()
    assert len(summary["config_fingerprint"]) == 64
    assert summary["commit"] is None or len(summary["commit"]) == 40
    return summary


def run_single(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_plain(["-m", "ds_twophase.train", *args], timeout=timeout)


def check_schedule_events(rows: list[dict]) -> None:
    decisions = [r["decision"] for r in rows]
    assert "plateau" in decisions and "switch" in decisions and "decay" in decisions, decisions
    switch = decisions.index("switch")
    assert decisions.index("plateau") <= switch < decisions.index("decay")
    # hmax is measured exactly in the switch epoch and every convergence epoch after it
    assert all(r["hmax"] is None for r in rows[:switch])
    assert all(r["hmax"] is not None and r["probe_seconds"] > 0 for r in rows[switch:])
    assert all(r["phase"] == "convergence" for r in rows[switch:])
    decay = decisions.index("decay")
    assert rows[decay]["lr"] == pytest.approx(rows[decay - 1]["lr"] * 0.5)
    for key in (
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "phase",
        "hmax",
        "decision",
        "probe_seconds",
        "epoch_seconds",
        "train_loss_se",
        "hmax_se",
        "probe_loss",
        "probe_loss_se",
        "loss_rise_z",
        "hmax_rise_z",
    ):
        assert all(key in r for r in rows), key
    # the noise of what the rule compares: the epoch loss's and, where the probe ran, hmax's
    # and the probe batch loss's
    assert all(r["train_loss_se"] > 0 for r in rows)
    assert all(r["hmax_se"] > 0 and r["probe_loss"] > 0 for r in rows[switch:])
    assert all(r["probe_loss"] is None for r in rows[:switch])


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_two_ranks_plateau_switch_decay(tiny_config, run_dir):
    proc = run_deepspeed(
        ["ds_twophase.train", "--config", tiny_config, *run_dir.flag, *VAL_SETS], module=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stdout + proc.stderr  # the exit is clean, not lucky
    rows = run_dir.metrics()
    assert [r["epoch"] for r in rows] == list(range(1, 15))
    check_schedule_events(rows)
    # the same held-out split as one process computes (test_one_process_same_config checks 1 rank)
    check_summary(run_dir.path, rows)
    # the ranks agreed after every epoch end (the trainer stops otherwise), and only rank 0 logs
    assert proc.stdout.count("epoch 14/14") == 1
    assert "final test accuracy" in proc.stdout
    assert json.loads((run_dir.path / "config.json").read_text())["trainer"]["epochs"] == 14
    ckpt = run_dir.path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["epoch0012", "epoch0014"]
    assert (ckpt / "epoch0014" / "COMPLETE").is_file()
    # The probe's warm-start vector travels with the checkpoint, as plain numpy data.
    state = json.loads((ckpt / "epoch0014" / "ds_twophase.json").read_text())
    assert state["tensors"] == ["probe_vector"]
    vector = np.load(ckpt / "epoch0014" / "probe_vector.npy", allow_pickle=False)
    assert vector.shape == (12288,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    probed = [r for r in rows if r["hmax"] is not None]
    assert all(r["probe_hvps"] >= 1 for r in probed)
    assert all(r["probe_hvps"] is None for r in rows if r["hmax"] is None)


@pytest.mark.timeout(300)
def test_one_process_same_config(tiny_config, run_dir):
    proc = run_single("--config", tiny_config, *run_dir.flag, *VAL_SETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = run_dir.metrics()
    assert len(rows) == 14
    check_schedule_events(rows)
    check_summary(run_dir.path, rows)
    # a second run into the same directory without --resume must not overwrite the first
    saved_config = (run_dir.path / "config.json").read_text()
    again = run_single("--config", tiny_config, *run_dir.flag, "--set", "trainer.seed=5")
    assert again.returncode == 2
    assert "already holds a run; continue it with --resume auto" in again.stderr
    assert "Traceback" not in again.stderr
    assert run_dir.metrics() == rows
    assert (run_dir.path / "config.json").read_text() == saved_config  # not the refused run's


@pytest.mark.timeout(400)
def test_stop_and_resume_equals_uninterrupted_run(tiny_config, tmp_path):
    full, split = RunDir(tmp_path / "full"), RunDir(tmp_path / "split")
    common = ["--config", tiny_config, "--set", "trainer.checkpoint_every=3"]
    assert run_single(*common, *full.flag).returncode == 0
    first = run_single(*common, *split.flag, "--stop-after", "5")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after epoch 5" in first.stdout
    assert len(split.metrics()) == 5
    second = run_single(*common, *split.flag, "--resume", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing after epoch 5" in second.stdout
    assert without_timing(split.metrics()) == without_timing(full.metrics())
    a, b = full.final_params(), split.final_params()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_own_loop_example(tmp_path):
    proc = run_deepspeed(["examples/own_loop.py", "--epochs", "6", "--out", tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "records.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[2]["decision"] == "switch" and records[2]["hmax"] is not None
    assert all(r["phase"] == "convergence" and r["hmax"] is not None for r in records[3:])
    assert proc.stdout.count("epoch 6 ") == 1


@pytest.mark.timeout(300)
def test_initialize_in_a_plain_python_script_runs_as_one_rank(tmp_path):
    """``python examples/own_loop.py`` without any launcher: ds_twophase.initialize starts a
    one-rank group itself (DeepSpeed alone would look for MPI and die without mpi4py)."""
    proc = run_plain(["examples/own_loop.py", "--epochs", "2", "--out", tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mpi4py" not in proc.stderr
    records = json.loads((tmp_path / "records.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert proc.stdout.count("epoch 2 ") == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_late_step_ablation_never_runs_the_probe(tiny_config, run_dir):
    proc = run_single(
        "--config",
        tiny_config,
        *run_dir.flag,
        "--set",
        'scheduler.params.convergence="late_step"',
        "--set",
        "scheduler.params.max_exploration_epochs=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = run_dir.metrics()
    assert all(r["hmax"] is None and r["probe_hvps"] is None for r in rows)
    assert all(r["probe_seconds"] == 0 for r in rows)
    switch = next(r["epoch"] for r in rows if r["decision"] == "switch")
    left = 14 - switch
    expected = [switch + int(p * left + 0.5) for p in (0.5, 0.75)]
    assert [r["epoch"] for r in rows if r["decision"] == "decay"] == expected


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "scheduler,phase",
    [
        ('{"type": "WarmupStepLR", "params": {"warmup_epochs": 1, "milestones": [2]}}', "step"),
        (
            '{"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 2.0, '
            '"warmup_num_steps": 8, "warmup_type": "linear"}}',
            None,
        ),
    ],
    ids=["WarmupStepLR", "deepspeed-WarmupLR"],
)
def test_other_schedulers_go_through_the_same_loop(tiny_config, run_dir, scheduler, phase):
    proc = run_single(
        "--config",
        tiny_config,
        *run_dir.flag,
        "--set",
        f"scheduler={scheduler}",
        "--set",
        "trainer.epochs=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = run_dir.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["phase"] == phase and r["hmax"] is None for r in rows)
    assert all(r["probe_seconds"] == 0 for r in rows)
    if phase == "step":  # x0.1 after epoch 2
        assert [r["lr"] for r in rows] == pytest.approx([2.0, 0.2, 0.2])
    else:  # DeepSpeed's linear warmup reached its peak after 8 of the 15 steps
        assert rows[-1]["lr"] == pytest.approx(2.0)
