"""DeepSpeed's TensorBoard monitor gets our per-epoch events, read back with TensorBoard's own
event reader, and what a reader sees for an epoch trained again after a resume."""

from __future__ import annotations

import json

import pytest
from _launch import run_plain
from _runs import TINY, RunDir

from ds_twophase.faults import CRASH_IN_SAVE_ENV
from ds_twophase.trainer.monitor_events import row_events

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.mark.timeout(600)
def test_tensorboard_events_read_back_and_a_retrained_epoch_appears_twice(tmp_path, monkeypatch):
    run_dir, tb = RunDir(tmp_path / "run"), tmp_path / "tb"
    monitor = {"enabled": True, "output_path": str(tb), "job_name": "job"}
    args = ["-m", "ds_twophase.train", "--config", TINY, *run_dir.flag]
    for key, value in {
        "trainer.epochs": 3,
        "trainer.checkpoint_every": 1,
        "scheduler.params.probe.every": 2,  # an hmax event too
        "tensorboard": json.dumps(monitor),
    }.items():
        args += ["--set", f"{key}={value}"]
    # The first process dies while saving epoch 2, after its epoch-2 events were written: the
    # resumed run continues from epoch 1's checkpoint and trains (and logs) epoch 2 again.
    monkeypatch.setenv(CRASH_IN_SAVE_ENV, "2")
    assert run_plain(args).returncode == 17
    monkeypatch.delenv(CRASH_IN_SAVE_ENV)
    second = run_plain([*args, "--resume", "auto"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing after epoch 1" in second.stdout

    reader = event_accumulator.EventAccumulator(str(tb / "job"))
    reader.Reload()
    rows = run_dir.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value, step in row_events(row):
            expected.setdefault(tag, []).append((step, value))
    ours = {t for t in reader.Tags()["scalars"] if t.startswith("ds_twophase/")}
    assert ours == set(expected) and "ds_twophase/hmax" in ours
    for tag, want in expected.items():
        events = reader.Scalars(tag)
        # Epoch 2 twice, once from each process's event file; the newest is the resumed run's.
        steps = [step for step, _ in want]
        assert [e.step for e in events] == sorted(steps + [2] * steps.count(2)), tag
        newest = {e.step: e.value for e in sorted(events, key=lambda e: e.wall_time)}
        assert list(newest) == steps, tag
        assert list(newest.values()) == pytest.approx([v for _, v in want], rel=1e-6), tag
    # On one CPU the retrained epoch is bit-identical, so both points coincide.
    twice = [e.value for e in reader.Scalars("ds_twophase/train_loss") if e.step == 2]
    assert twice[0] == twice[1]
