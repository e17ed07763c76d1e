"""summary.json's pure builder: schedule events, forced switches and the test/val fallback."""

from __future__ import annotations

import pytest

from ds_twophase.schedulers import TwoPhaseDecision
from ds_twophase.trainer.summary import build_summary, config_fingerprint


def row(epoch, decision, phase="exploration", **kw):
    base = {
        "epoch": epoch,
        "decision": decision,
        "phase": phase,
        "lr": 1.0,
        "val_accuracy": 0.5,
        "val_loss": 1.0,
        "probe_seconds": 0.0,
        "epoch_seconds": 1.0,
    }
    return {**base, **kw}


def config(val_size=0, **params):
    return {
        "scheduler": {"type": "TwoPhaseLR", "params": params},
        "trainer": {"dataset": {"val_size": val_size}},
    }


def decided_rows(losses, ratio=1 / 3, cap=None):
    """Rows as the trainer writes them from the real decision state machine (hmax 1.0)."""
    decision = TwoPhaseDecision(
        total_epochs=len(losses),
        patience=1,
        threshold=0.0,
        extra_epochs_ratio=ratio,
        decay_factor=0.5,
        max_exploration_epochs=cap,
    )
    rows = []
    for i, loss in enumerate(losses, start=1):
        out = decision.end_epoch(loss, lambda: 1.0)
        extra = {"plateau": out.plateau, "switch_forced": out.switch_forced}
        rows.append(row(i, out.decision, decision.phase, **extra))
    return rows


@pytest.mark.parametrize(
    ("losses", "params", "decisions", "plateau", "switch", "forced", "exploring"),
    [
        # plateau at 3 -> switch at 3 + floor(3/3 + 0.5) = 4
        (
            [1.0, 0.5, 0.6, 0.55, 0.5],
            {},
            ["none", "none", "plateau", "switch", "keep"],
            3,
            4,
            False,
            False,
        ),
        # no plateau; the cap of 2 exploration epochs forces the switch
        ([1.0, 0.5, 0.25], {"cap": 2}, ["none", "switch", "keep"], None, 2, True, False),
        # plateau at 2 plans a switch at 4 (ratio 1); the cap at 3 forces it earlier
        (
            [1.0, 1.1, 0.9, 0.8],
            {"ratio": 1.0, "cap": 3},
            ["none", "plateau", "switch", "keep"],
            2,
            3,
            True,
            False,
        ),
        # the run ended still exploring (plateau at 3 plans the switch at 4)
        ([1.0, 0.5, 0.6], {}, ["none", "none", "plateau"], 3, None, None, True),
    ],
)
def test_schedule_events(losses, params, decisions, plateau, switch, forced, exploring):
    rows = decided_rows(losses, **params)
    assert [r["decision"] for r in rows] == decisions
    s = build_summary(rows, config(), {"a": 1})
    assert (s["plateau_epoch"], s["switch_epoch"], s["switch_forced"]) == (plateau, switch, forced)
    assert s["ended_in_exploration"] is exploring


def test_rows_written_before_switch_forced_existed_still_summarise():
    rows = decided_rows([1.0, 0.5, 0.25], cap=2)
    for r in rows:
        del r["switch_forced"]
    s = build_summary(rows, config(max_exploration_epochs=2), {"a": 1})
    assert (s["switch_epoch"], s["switch_forced"]) == (2, None)  # unknown, not re-derived


def test_numbers_and_test_fallback():
    rows = [
        row(1, None, None, val_accuracy=0.6, probe_seconds=0.5, epoch_seconds=2.0),
        row(2, None, None, val_accuracy=0.8, lr=0.5, epoch_seconds=2.0),
        row(3, None, None, val_accuracy=0.7, lr=0.25, epoch_seconds=1.0, val_loss=0.9),
    ]
    s = build_summary(rows, config(), {"a": 1}, commit="c" * 40, val_indices=None)
    # val_size 0: the validation split is the test split
    assert s["val_is_test"] is True and (s["test_accuracy"], s["test_loss"]) == (0.7, 0.9)
    assert (s["best_val_accuracy"], s["best_val_epoch"]) == (0.8, 2)
    assert s["decay_epochs"] == [] and s["plateau_epoch"] is None
    assert s["ended_in_exploration"] is None  # not a two-phase run
    assert s["final_lr"] == 0.25 and s["wall_seconds"] == 5.0 and s["probe_share"] == 0.1
    assert s["commit"] == "c" * 40 and s["val_indices_digest"] is None
    rows[-1].update(test_accuracy=0.75, test_loss=0.8)
    s = build_summary(rows, config(val_size=10), {"a": 1})
    assert (s["test_accuracy"], s["test_loss"], s["val_is_test"]) == (0.75, 0.8, False)


def test_fingerprint_ignores_key_order_only():
    assert config_fingerprint({"a": 1, "b": 2}) == config_fingerprint({"b": 2, "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})
