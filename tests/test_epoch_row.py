"""The one epoch-row schema: a real run's rows hold exactly its columns, the monitor's tags and
the schedule's events come from it, and summary and analysis read events through one function."""

from __future__ import annotations

import json

import pytest
from _launch import run_plain

from ds_twophase import epoch_row
from ds_twophase.analysis import runs
from ds_twophase.trainer import monitor_events
from ds_twophase.trainer.summary import build_summary


@pytest.mark.timeout(300)
def test_a_real_rows_columns_are_exactly_the_schema(tiny_config, run_dir):
    # Short, but with every optional column: a forced switch (probe columns), margins, the
    # skip mode's counter, and a held-out validation split (test_* in the last row).
    sets = {
        "trainer.epochs": 3,
        "scheduler.params.max_exploration_epochs": 2,
        "trainer.margins_every": 3,
        "trainer.on_nonfinite_loss": '"skip"',
        "trainer.dataset.train_size": 1200,
        "trainer.dataset.val_size": 200,
    }
    flags = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = run_plain(["-m", "ds_twophase.train", "--config", tiny_config, *run_dir.flag, *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = run_dir.metrics()
    assert len(rows) == 3
    for row in rows:
        epoch_row.check_row(row)  # declared columns, declared types
    seen = {key for row in rows for key in row}
    assert seen == set(epoch_row.BY_NAME)
    switch = next(r for r in rows if r["decision"] == "switch")
    assert switch["epoch"] == 2 and switch["switch_forced"] is True
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert (summary["switch_epoch"], summary["switch_forced"]) == (2, True)


def test_the_monitor_takes_its_tags_from_the_schema():
    scalars = [c.name for c in epoch_row.COLUMNS if c.monitor == "scalar"]
    assert monitor_events.SCALARS == tuple(scalars)
    assert set(monitor_events.CODES) == set(epoch_row.CODED) == {"phase", "decision"}
    assert monitor_events.TAGS == tuple(
        monitor_events.TAG_PREFIX + n for n in (*scalars, *epoch_row.CODED)
    )


def test_check_row_names_an_undeclared_column_and_a_wrong_type():
    epoch_row.check_row({"epoch": 1, "lr": 1, "hmax": None, "plateau": False})
    with pytest.raises(ValueError, match="'new_thing' is not in"):
        epoch_row.check_row({"epoch": 1, "new_thing": 1.0})
    with pytest.raises(ValueError, match="decision = 3"):
        epoch_row.check_row({"epoch": 1, "decision": 3})
    with pytest.raises(ValueError, match="lr = True"):
        epoch_row.check_row({"epoch": 1, "lr": True})


def test_summary_and_analysis_read_events_through_one_function():
    decisions = ["none", "plateau", "switch", "keep", "decay", "floor", "keep"]
    rows = [
        {"epoch": i, "decision": d, "lr": 1.0, "switch_forced": d == "switch" or None}
        for i, d in enumerate(decisions, 1)
    ]
    ev = epoch_row.schedule_events(rows)
    assert (ev.plateau, ev.switch, ev.switch_forced, ev.decays, ev.floors) == (2, 3, True, [5], [6])
    assert runs.events_of is epoch_row.schedule_events and runs.Events is epoch_row.Events
    s = build_summary(rows, {}, {})
    assert (s["plateau_epoch"], s["switch_epoch"], s["switch_forced"]) == (2, 3, True)
    assert s["decay_epochs"] == ev.decays
    # no decisions (DeepSpeed's own schedulers): analysis infers decays from LR drops, the
    # summary records none
    plain = [{"epoch": i, "decision": None, "lr": lr} for i, lr in enumerate([1.0, 1.0, 0.1], 1)]
    assert epoch_row.schedule_events(plain).decays == [3]
    assert build_summary(plain, {}, {})["decay_epochs"] == []
