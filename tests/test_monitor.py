"""Issue 13 items 3-5: DeepSpeed's monitor gets our per-epoch events (and a resumed run neither
duplicates nor loses them), ``probe.every`` measures hmax without changing the schedule, and
``trainer.margins_every`` records margins."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from _launch import run_plain
from _runs import TINY, RunDir

from ds_twophase.config import validate_config
from ds_twophase.trainer.monitor_events import (
    DECISION_CODES,
    PHASE_CODES,
    TAGS,
    csv_file_name,
    row_events,
    trim_csv,
)

WARMUP_STEP = {"type": "WarmupStepLR", "params": {"warmup_epochs": 1, "milestones": [3]}}


def tiny(**changes) -> dict:
    cfg = json.loads(Path(TINY).read_text())
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def run_single(*args: str, timeout: float = 240):
    return run_plain(["-m", "ds_twophase.train", *args], timeout=timeout)


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


# --- config -----------------------------------------------------------------------------------


def test_probe_every_is_accepted_with_any_scheduler_and_feeds_no_schedule():
    sched = {**WARMUP_STEP, "params": {**WARMUP_STEP["params"], "probe": {"every": 2}}}
    run = validate_config(tiny(scheduler=sched), world_size=1)
    assert run.probe is not None and run.probe.every == 2
    assert run.schedule_probe is None  # WarmupStepLR decides nothing from hmax
    assert "probe" not in run.scheduler.params
    # A scheduler DeepSpeed builds: the probe section is ours, not an argument of WarmupLR.
    ds_sched = {
        "type": "WarmupLR",
        "params": {"warmup_num_steps": 4, "probe": {"every": 3, "max_iters": 5}},
    }
    run = validate_config(tiny(scheduler=ds_sched), world_size=1)
    assert run.probe.every == 3 and run.schedule_probe is None
    assert run.deepspeed["scheduler"]["params"] == {"warmup_num_steps": 4}
    # TwoPhaseLR keeps its own probe; every rides along
    cfg = tiny()
    cfg["scheduler"]["params"]["probe"]["every"] = 4
    run = validate_config(cfg, world_size=1)
    assert run.schedule_probe is run.probe and run.probe.every == 4


# --- events -----------------------------------------------------------------------------------


def test_row_events_encode_strings_and_skip_missing_values():
    row = {
        "epoch": 7,
        "lr": 0.5,
        "train_loss": 1.25,
        "val_accuracy": None,
        "hmax": 3.0,
        "probe_hvps": 4,
        "phase": "convergence",
        "decision": "decay",
        "plateau": False,
    }
    assert row_events(row) == [
        ("ds_twophase/lr", 0.5, 7),
        ("ds_twophase/train_loss", 1.25, 7),
        ("ds_twophase/hmax", 3.0, 7),
        ("ds_twophase/probe_hvps", 4.0, 7),
        ("ds_twophase/phase", 1.0, 7),
        ("ds_twophase/decision", 5.0, 7),
    ]
    # WarmupStepLR's constant phase "step" has no code; its decisions do
    events = dict(
        (t, v) for t, v, _ in row_events({"epoch": 1, "phase": "step", "decision": "none"})
    )
    assert events == {"ds_twophase/decision": 0.0}
    assert set(PHASE_CODES) == {"exploration", "convergence"}
    assert len(set(DECISION_CODES.values())) == len(DECISION_CODES)


def test_trim_csv_keeps_one_header_and_rows_up_to_the_step(tmp_path):
    path = tmp_path / "ds_twophase_lr.csv"
    path.write_text("step,lr\n1,2.0\n2,2.0\n3,1.0\nstep,lr\n3,1.0\n4,0.5\n")
    assert trim_csv(path, 3)
    assert read_csv(path) == [
        ["step", "lr"],
        ["1", "2.0"],
        ["2", "2.0"],
        ["3", "1.0"],
        ["3", "1.0"],
    ]
    other = tmp_path / "notes.csv"
    other.write_text("a,b,c\n1,2,3\n")
    assert not trim_csv(other, 0)
    assert other.read_text() == "a,b,c\n1,2,3\n"


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_monitor_events_survive_stop_and_resume_and_margins_are_recorded(tmp_path):
    """One 1-process run of the tiny two-phase config, stopped after epoch 5 and resumed: every
    tag's CSV file has one header and each epoch exactly once, equal to metrics.jsonl. With
    probe.every=4 the exploration epoch 4 has an analysis hmax, saved warm start included."""
    run_dir = RunDir(tmp_path / "run")
    csv_dir = tmp_path / "csv"
    common = [
        "--config",
        TINY,
        *run_dir.flag,
        "--set",
        "trainer.epochs=8",
        "--set",
        "trainer.margins_every=3",
        "--set",
        "scheduler.params.probe.every=4",
        "--set",
        f'csv_monitor={{"enabled": true, "output_path": "{csv_dir}", "job_name": "job"}}',
    ]
    first = run_single(*common, "--stop-after", "5")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_single(*common, "--resume", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing after epoch 5" in second.stdout
    rows = run_dir.metrics()
    assert [r["epoch"] for r in rows] == list(range(1, 9))

    # margins every 3 epochs and after the last
    margin_epochs = [r["epoch"] for r in rows if "margin_median" in r]
    assert margin_epochs == [3, 6, 8]
    for r in rows:
        if "margin_median" in r:
            assert r["margin_q1"] <= r["margin_median"] <= r["margin_q3"]
            assert r["margin_iqr"] == pytest.approx(r["margin_q3"] - r["margin_q1"])
            assert r["margin_samples"] == 1000

    job = csv_dir / "job"
    expected = {}
    for r in rows:
        for tag, value, step in row_events(r):
            expected.setdefault(tag, []).append((step, value))
    assert {"ds_twophase/lr", "ds_twophase/phase", "ds_twophase/decision"} <= set(expected)
    assert "ds_twophase/hmax" in expected and "ds_twophase/margin_iqr" in expected
    assert rows[3]["phase"] == "exploration" and rows[3]["hmax"] is not None
    state = json.loads(
        (run_dir.path / "checkpoints" / "epoch0005" / "ds_twophase.json").read_text()
    )
    assert "probe_every_vector" in state["tensors"] and state["probe_every"]["indices"]
    for tag in TAGS:
        path = job / csv_file_name(tag)
        if tag not in expected:
            assert not path.exists(), tag
            continue
        lines = read_csv(path)
        assert lines[0] == ["step", tag.rsplit("/", 1)[1]], tag
        assert all(line[0] != "step" for line in lines[1:]), f"{tag}: second header"
        got = [(int(s), float(v)) for s, v in lines[1:]]
        assert got == expected[tag], tag  # each epoch once, the values of metrics.jsonl
    # DeepSpeed's own per-step file: one header, each sample count once
    own = read_csv(job / "Train_Samples_lr.csv")
    steps = [int(s) for s, _ in own[1:]]
    assert own[0] == ["step", "lr"] and steps == sorted(set(steps)) and len(steps) == 8 * 5


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_probe_every_leaves_a_step_decay_run_unchanged(tmp_path):
    """WarmupStepLR with and without probe.every=2: the same LRs and losses (the probe changes
    nothing), hmax exactly at epochs 2 and 4."""
    plain, probed = RunDir(tmp_path / "plain"), RunDir(tmp_path / "probed")
    base = ["--config", TINY, "--set", "trainer.epochs=5", "--set", "trainer.checkpoint_every=0"]
    sched = json.dumps(WARMUP_STEP)
    every = json.dumps(
        {**WARMUP_STEP, "params": {**WARMUP_STEP["params"], "probe": {"every": 2, "max_iters": 10}}}
    )
    a = run_single(*base, *plain.flag, "--set", f"scheduler={sched}")
    assert a.returncode == 0, a.stderr[-3000:]
    b = run_single(*base, *probed.flag, "--set", f"scheduler={every}")
    assert b.returncode == 0, b.stderr[-3000:]
    rows_a, rows_b = plain.metrics(), probed.metrics()
    assert [r["lr"] for r in rows_a] == [r["lr"] for r in rows_b]
    assert [r["lr"] for r in rows_a] == pytest.approx([2.0, 2.0, 0.2, 0.2, 0.2])
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["decision"] for r in rows_a] == [r["decision"] for r in rows_b]
    assert all(r["hmax"] is None for r in rows_a)
    assert [r["epoch"] for r in rows_b if r["hmax"] is not None] == [2, 4]
    for r in rows_b:
        if r["hmax"] is not None:
            assert r["probe_hvps"] >= 1 and r["probe_seconds"] > 0 and r["probe_error"] is None
        else:
            assert r["probe_seconds"] == 0


# --- plot -------------------------------------------------------------------------------------


def test_plot_shows_margins_when_a_run_recorded_them(tmp_path):
    from ds_twophase.analysis import load_run
    from ds_twophase.analysis.plot import MARGIN_PANEL, PANELS, panels, plot_data

    def write(name: str, margins: bool) -> Path:
        path = tmp_path / name
        path.mkdir()
        cfg = tiny()
        cfg["trainer"]["output_dir"] = str(path)
        (path / "config.json").write_text(json.dumps(cfg))
        rows = []
        for epoch in range(1, 7):
            row = {"epoch": epoch, "lr": 1.0, "train_loss": 1.0 / epoch, "decision": "none"}
            if margins and epoch % 3 == 0:
                row.update(margin_q1=0.1 * epoch, margin_median=0.2 * epoch, margin_q3=0.4 * epoch)
            rows.append(row)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    plain = plot_data([load_run(write("plain", False))])
    assert panels(plain) == PANELS
    both = plot_data([load_run(write("margins", True)), load_run(tmp_path / "plain")])
    assert panels(both) == (*PANELS, MARGIN_PANEL)
    assert both[0].curves["margin_median"] == ([3, 6], [pytest.approx(0.6), pytest.approx(1.2)])
    assert both[0].curves["margin_q1"][0] == both[0].curves["margin_q3"][0] == [3, 6]
    assert both[1].curves["margin_median"] == ([], [])


def test_a_missing_monitor_package_is_one_line_naming_the_extra():
    import importlib.util

    from ds_twophase.errors import ConfigError
    from ds_twophase.trainer.monitor_events import check_backends

    check_backends({"csv_monitor": {"enabled": True}, "wandb": {"enabled": False}})  # no package
    cfg = {"tensorboard": {"enabled": True, "output_path": "x"}, "wandb": {"enabled": True}}
    missing = [m for m in ("tensorboard", "wandb") if importlib.util.find_spec(m) is None]
    if not missing:
        pytest.skip("tensorboard and wandb are both installed")
    with pytest.raises(ConfigError) as info:
        check_backends(cfg)
    assert [m.split(".")[0] for m in info.value.messages] == missing
    assert all(f'".[{m}]"' in msg for m, msg in zip(missing, info.value.messages, strict=True))
