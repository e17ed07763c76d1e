"""Expected-value tables for TwoPhaseLR and WarmupStepLR on hand-written traces."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from ds_twophase.errors import ConfigError
from ds_twophase.schedulers import TwoPhaseLR, WarmupStepLR
from ds_twophase.schedulers.two_phase import resolve_patience


def make_optimizer(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    params = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)
    ]
    return torch.optim.SGD(params, lr=lr)


def probe_died() -> float:
    """A ``hessian`` callable whose probe fails."""
    raise RuntimeError("probe died")


QUICK_SWITCH = dict(steps_per_epoch=1, warmup_epochs=0, plateau_patience=1, extra_epochs_ratio=0)
"""One step per epoch, no warmup, a plateau after one epoch without improvement and the switch
in the same epoch: the shortest way into the convergence phase."""


class Probe:
    """A hessian callable that returns scripted values per epoch and records when it is called."""

    def __init__(self, values: dict[int, float]):
        self.values = values
        self.calls: list[int] = []
        self.epoch = 0

    def __call__(self) -> float:
        self.calls.append(self.epoch)
        value = self.values[self.epoch]
        if isinstance(value, Exception):
            raise value
        return value


def run(losses, hmax=None, **kw):
    """Feed an epoch loss trace; returns (records, probe) after each epoch's end_epoch."""
    kw.setdefault("warmup_epochs", 0)
    kw.setdefault("total_epochs", 100)
    sched = TwoPhaseLR(make_optimizer(), steps_per_epoch=1, **kw)
    probe = Probe(hmax or {})
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for e, loss in enumerate(losses, start=1):
            probe.epoch = e
            sched.step()
            records.append(sched.end_epoch(loss, probe))
    return records, probe, sched


def table(records):
    return [(r.epoch, r.decision, r.phase[0], r.lr, r.hmax) for r in records]


def test_no_plateau_never_probes():
    losses = [1.0 - 0.05 * e for e in range(12)]
    records, probe, sched = run(losses, plateau_patience=2)
    assert [r.decision for r in records] == ["none"] * 12
    assert probe.calls == []
    assert sched.phase == "exploration"
    assert all(r.lr == 1.0 for r in records)


def test_plateau_then_switch_after_alpha_extra_epochs():
    # best 0.7 at epoch 3; epochs 4 and 5 do not improve -> plateau at x=5 (patience 2);
    # alpha = floor(5/3 + 0.5) = 2 -> switch at the end of epoch 7.
    losses = [1.0, 0.8, 0.7, 0.7, 0.75, 0.72, 0.71, 0.69]
    records, probe, sched = run(losses, {7: 3.0, 8: 2.0}, plateau_patience=2)
    assert table(records) == [
        (1, "none", "e", 1.0, None),
        (2, "none", "e", 1.0, None),
        (3, "none", "e", 1.0, None),
        (4, "none", "e", 1.0, None),
        (5, "plateau", "e", 1.0, None),
        (6, "none", "e", 1.0, None),
        (7, "switch", "c", 1.0, 3.0),
        (8, "keep", "c", 1.0, 2.0),
    ]
    assert records[4].switch_epoch == 7
    assert probe.calls == [7, 8]  # exactly once in each epoch that needs it


@pytest.mark.parametrize(
    "x,ratio,expected_switch",
    [(3, 1 / 3, 4), (4, 1 / 3, 5), (5, 1 / 3, 7), (6, 1 / 3, 8), (9, 0.5, 14), (4, 0.0, 4)],
)
def test_alpha_rounding(x, ratio, expected_switch):
    # patience 1: epoch 1 sets best, epochs 2.. are flat -> first plateau at the end of epoch 2.
    # Make the plateau land at epoch x by improving until x - 1.
    losses = [1.0 - 0.01 * e for e in range(x - 1)] + [2.0] * 20
    hmax = {e: 1.0 for e in range(1, 40)}
    records, probe, _ = run(losses, hmax, plateau_patience=1, extra_epochs_ratio=ratio)
    assert records[x - 1].decision in ("plateau", "switch")
    switch = [r.epoch for r in records if r.decision == "switch"]
    assert switch == [expected_switch]
    assert probe.calls[0] == expected_switch


def test_decay_and_no_two_consecutive_decays():
    # plateau at 2 (patience 1), alpha = floor(2/3 + .5) = 1 -> switch at 3.
    losses = [1.0, 1.0, 0.9, 1.0, 1.1, 1.2, 1.1, 1.3]
    hmax = {3: 1.0, 4: 2.0, 5: 3.0, 6: 4.0, 7: 5.0, 8: 6.0}
    records, probe, _ = run(losses, hmax, plateau_patience=1, decay_factor=0.5)
    assert table(records) == [
        (1, "none", "e", 1.0, None),
        (2, "plateau", "e", 1.0, None),
        (3, "switch", "c", 1.0, 1.0),
        (4, "decay", "c", 0.5, 2.0),  # h 1 -> 2 up, f .9 -> 1.0 up
        (5, "keep", "c", 0.5, 3.0),  # h_prev was reset to 0: never two decays in a row
        (6, "decay", "c", 0.25, 4.0),  # h 3 -> 4, f 1.1 -> 1.2
        (7, "keep", "c", 0.25, 5.0),
        (8, "decay", "c", 0.125, 6.0),  # h 5 -> 6, f 1.1 -> 1.3
    ]
    assert probe.calls == [3, 4, 5, 6, 7, 8]


def test_no_decay_unless_both_rise():
    losses = [1.0, 1.0, 0.9, 1.0, 0.95, 0.97, 0.96]
    hmax = {3: 2.0, 4: 1.0, 5: 1.5, 6: 1.4, 7: 1.4}
    records, _, _ = run(losses, hmax, plateau_patience=1)
    # e4: h down, f up; e5: h up, f down; e6: h down, f up; e7: h equal (not a rise), f down.
    assert [r.decision for r in records[3:]] == ["keep", "keep", "keep", "keep"]
    assert records[-1].lr == 1.0


@pytest.mark.parametrize("first_hmax", [0.0, -1.0])
def test_non_positive_previous_eigenvalue_never_decays(first_hmax):
    losses = [1.0, 1.0, 0.9, 1.0, 1.1]
    hmax = {3: first_hmax, 4: 2.0, 5: 3.0}
    records, _, _ = run(losses, hmax, plateau_patience=1)
    assert [r.decision for r in records[2:]] == ["switch", "keep", "decay"]
    assert [r.lr for r in records[2:]] == [1.0, 1.0, 0.5]


def test_min_lr_floor():
    losses = [1.0, 1.0, 0.9] + [1.0 + 0.1 * i for i in range(1, 9)]
    hmax = {e: float(e) for e in range(3, 12)}
    records, _, sched = run(losses, hmax, plateau_patience=1, decay_factor=0.5, min_lr=0.2)
    # decays at 4, 6, 8 (0.25 -> 0.125, floored to 0.2: the LR still moves); at 10 the LR already
    # sits at min_lr, so the decay is a no-op: "floor", which keeps like "keep" (h_prev = hmax),
    # so epoch 11 compares with epoch 10 and is a floor again instead of a keep.
    assert [(r.epoch, r.decision, r.lr, r.decayed) for r in records[2:]] == [
        (3, "switch", 1.0, False),
        (4, "decay", 0.5, True),
        (5, "keep", 0.5, False),
        (6, "decay", 0.25, True),
        (7, "keep", 0.25, False),
        (8, "decay", 0.2, True),
        (9, "keep", 0.2, False),
        (10, "floor", 0.2, False),
        (11, "floor", 0.2, False),
    ]
    assert sched.get_last_lr() == [0.2]
    assert sched.decision.num_decays == 3 and sched.decision.scale == 0.125
    assert (sched.decision.h_prev, sched.decision.f_prev) == (11.0, losses[10])


@pytest.mark.parametrize(
    "groups,min_lr,expected",
    [
        # one group at 1.0: 0.5, 0.25, 0.2 (from 0.25), then at the floor
        (1, 0.2, ["decay", "decay", "decay", "floor", "floor"]),
        # groups at 1.0 and 2.0: the second still moves 0.25 -> 0.2 in the 4th decay
        (2, 0.2, ["decay", "decay", "decay", "decay", "floor"]),
        # min_lr equal to the peak: no decay can move the LR
        (1, 1.0, ["floor"] * 5),
    ],
)
def test_floor_only_when_no_group_moves(groups, min_lr, expected):
    # switch at 2 (patience 1, alpha 0), then hmax and loss rise every epoch: with a floor
    # keeping h_prev every epoch can ask for a decay; after a real decay the next epoch keeps.
    sched = TwoPhaseLR(
        make_optimizer(groups=groups),
        total_epochs=50,
        **QUICK_SWITCH,
        min_lr=min_lr,
    )
    sched.end_epoch(1.0, lambda: 1.0)
    assert sched.end_epoch(1.0, lambda: 1.0).decision == "switch"
    asked = []
    e = 2
    while len(asked) < len(expected):
        e += 1
        rec = sched.end_epoch(float(e), lambda e=e: float(e))
        if rec.decision != "keep":
            asked.append(rec.decision)
    assert asked == expected
    assert all(lr >= min_lr for lr in sched.get_last_lr())


def test_forced_switch_without_plateau():
    losses = [1.0 - 0.05 * e for e in range(8)]
    records, probe, _ = run(
        losses, {4: 2.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0}, max_exploration_epochs=4
    )
    assert [r.decision for r in records] == ["none"] * 3 + ["switch"] + ["keep"] * 4
    assert probe.calls == [4, 5, 6, 7, 8]


def test_forced_switch_cuts_long_extra_phase():
    # plateau at 5 (patience 2) would switch at 7; the limit forces it at 6.
    losses = [1.0, 0.8, 0.7, 0.7, 0.75, 0.72, 0.71]
    records, _, _ = run(losses, {6: 1.0, 7: 1.0}, plateau_patience=2, max_exploration_epochs=6)
    assert [r.decision for r in records] == ["none"] * 4 + ["plateau", "switch", "keep"]


# The trace: with E=60, warmup 5, patience 3 the old detector "plateaued" at epoch 5.
WARMUP_LOSSES = [2.0, 1.0, 1.2, 1.3, 1.1, 1.0, 1.05, 1.1, 1.02, 1.03, 1.04, 1.05] + [1.1] * 8


@pytest.mark.parametrize(
    "warmup,plateau_at,switch_at",
    [
        (0, 5, 7),  # best 1.0 at 2; 3, 4, 5 do not improve; alpha = floor(5/3 + .5) = 2
        (0.5, 5, 7),  # ceil(0.5) = 1: epoch 1 unseen, epoch 2 still sets the best
        (1.2, 9, 12),  # ceil, not round: epochs 1-2 unseen; best 1.0 at 6; 7, 8, 9 do not improve
        (2.5, 9, 12),
        (5, 9, 12),  # the case: no plateau at 5; epoch 6 is the first one seen
        (5.5, 12, 16),  # ceil, not floor: epochs 1-6 unseen; best 1.02 at 9; 10, 11, 12
    ],
)
def test_plateau_detector_starts_after_warmup(warmup, plateau_at, switch_at):
    hmax = {e: 1.0 for e in range(1, 21)}
    records, probe, sched = run(
        WARMUP_LOSSES, hmax, warmup_epochs=warmup, plateau_patience=3, total_epochs=60
    )
    assert [r.epoch for r in records if r.plateau] == [plateau_at]
    assert [r.epoch for r in records if r.decision == "plateau"] == [plateau_at]
    assert [r.epoch for r in records if r.switched] == [switch_at]
    assert records[plateau_at - 1].switch_epoch == switch_at
    assert probe.calls[0] == switch_at


def test_warmup_epochs_do_not_delay_max_exploration_epochs():
    # the cap is unchanged by the warmup rule: it forces the switch even inside warmup
    records, probe, _ = run([1.0] * 4, {3: 2.0, 4: 2.0}, warmup_epochs=5, max_exploration_epochs=3)
    assert [r.decision for r in records] == ["none", "none", "switch", "keep"]
    assert not any(r.plateau for r in records)


def test_plateau_flag_when_the_plateau_epoch_also_switches():
    # patience 1, alpha = 0: epoch 2 completes the plateau and switches in the same epoch
    records, _, _ = run([1.0, 1.0, 1.1], {2: 1.0, 3: 2.0}, plateau_patience=1, extra_epochs_ratio=0)
    assert [(r.decision, r.plateau, r.switched) for r in records] == [
        ("none", False, False),
        ("switch", True, True),
        ("decay", False, False),
    ]


def test_plateau_flag_when_the_plateau_epoch_probe_fails():
    hmax = {2: RuntimeError("out of memory"), 3: 1.0}
    records, _, _ = run([1.0, 1.0, 1.0], hmax, plateau_patience=1, extra_epochs_ratio=0)
    assert [(r.decision, r.plateau) for r in records] == [
        ("none", False),
        ("skipped", True),
        ("switch", False),
    ]
    assert "out of memory" in records[1].warning


def test_max_failures_forces_the_switch_then_compares_from_the_next_good_probe():
    # plateau at 2, switch due at 2 (alpha 0); the probe fails at 2, 3 and 4 (the third is
    # non-finite, also a failure); epoch 5 is a nan loss (no probe: neither counts nor resets).
    failed = RuntimeError("probe died")
    hmax = {2: failed, 3: failed, 4: math.nan, 6: 5.0, 7: 6.0, 8: 7.0}
    losses = [1.0, 1.0, 1.0, 1.0, math.nan, 1.1, 1.2, 1.3]
    records, probe, sched = run(
        losses, hmax, plateau_patience=1, extra_epochs_ratio=0, probe_max_failures=3
    )
    assert [(r.epoch, r.decision, r.phase[0], r.hmax) for r in records] == [
        (1, "none", "e", None),
        (2, "skipped", "e", None),
        (3, "skipped", "e", None),
        (4, "switch", "c", None),  # forced after 3 failures
        (5, "skipped", "c", None),
        (6, "keep", "c", 5.0),  # h_prev was 0: the first good probe only records h_prev/f_prev
        (7, "decay", "c", 6.0),  # h 5 -> 6 and f 1.1 -> 1.2
        (8, "keep", "c", 7.0),
    ]
    assert "1 of 3" in records[1].warning and "2 of 3" in records[2].warning
    assert "probe.max_failures" in records[3].warning and "WITHOUT hmax" in records[3].warning
    assert records[3].switched and not records[3].plateau
    assert probe.calls == [2, 3, 4, 6, 7, 8]
    assert sched.decision.probe_failures == 0


def test_max_failures_one_switches_at_the_first_failure():
    records, _, _ = run(
        [1.0, 1.0, 1.0, 1.1],
        {2: RuntimeError("x"), 3: 1.0, 4: 2.0},
        plateau_patience=1,
        extra_epochs_ratio=0,
        probe_max_failures=1,
    )
    assert [r.decision for r in records] == ["none", "switch", "keep", "decay"]


def test_max_failures_count_survives_a_resume():
    kw = dict(
        total_epochs=20,
        **QUICK_SWITCH,
        probe_max_failures=3,
    )

    a = TwoPhaseLR(make_optimizer(), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        decisions = [a.end_epoch(1.0, probe_died).decision for _ in range(3)]
        assert decisions == ["none", "skipped", "skipped"]
        state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
        assert state["decision"]["probe_failures"] == 2
        b = TwoPhaseLR(make_optimizer(), **kw)
        b.load_state_dict(state)
        assert b.end_epoch(1.0, probe_died).decision == "switch"


@pytest.mark.parametrize("probe", [{"max_failures": 5}, {}])
def test_probe_max_failures_reaches_the_schedule_from_json(probe):
    from ds_twophase.config import validate_config
    from ds_twophase.engine import scheduler_factory

    cfg = {
        "train_batch_size": 8,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "scheduler": {"type": "TwoPhaseLR", "params": {"total_epochs": 10, "probe": probe}},
    }
    run = validate_config(cfg, world_size=1)
    build = scheduler_factory(
        run, total_epochs=None, steps_per_epoch=2, num_samples=None, batch=run.check_world_size(1)
    )
    sched = build(make_optimizer())
    assert sched.decision.max_probe_failures == probe.get("max_failures", 3)


@pytest.mark.parametrize(
    "params,key",
    [
        ({"probe": {"max_failures": 0}}, "scheduler.params.probe.max_failures"),
        ({"probe": {"max_failures": "3"}}, "scheduler.params.probe.max_failures"),
        ({"probe_max_failures": 5}, "scheduler.params.probe_max_failures"),
    ],
)
def test_bad_max_failures_is_one_config_line(params, key):
    from ds_twophase.config import validate_config
    from ds_twophase.errors import ConfigError

    cfg = {
        "train_batch_size": 8,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "scheduler": {"type": "TwoPhaseLR", "params": {"total_epochs": 10, **params}},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=1)
    assert [m for m in info.value.messages if m.startswith(key)], info.value.messages


@pytest.mark.parametrize(
    "kwargs,losses,expected",
    [
        # the loss keeps improving: no plateau, no cap
        (
            {"plateau_patience": 2},
            [1.0 - 0.05 * e for e in range(8)],
            [
                "still in the exploration phase after 8 epochs",
                "did not plateau (2 epochs without improvement after the 2 warmup epochs)",
                "no max_exploration_epochs is set",
            ],
        ),
        # a cap beyond the budget
        (
            {"plateau_patience": 2, "max_exploration_epochs": 20},
            [1.0 - 0.05 * e for e in range(8)],
            ["did not plateau", "max_exploration_epochs (20) was not reached"],
        ),
        # plateau at 7 (best 0.5 at 5), switch planned at 7 + floor(7/3 + .5) = 9 > 8
        (
            {"plateau_patience": 2},
            [1.0, 0.9, 0.8, 0.7, 0.5, 0.6, 0.6, 0.6],
            ["plateau at epoch 7", "end of epoch 9, after the last epoch"],
        ),
    ],
)
def test_a_run_that_never_leaves_exploration_says_why(kwargs, losses, expected):
    sched = TwoPhaseLR(
        make_optimizer(), steps_per_epoch=1, total_epochs=8, warmup_epochs=2, **kwargs
    )
    records = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for loss in losses:
            sched.step()
            records.append(sched.end_epoch(loss, lambda: 1.0))
    reason = sched.exploration_unfinished()
    assert reason is not None
    for text in expected:
        assert text in reason
    assert records[-1].warning == reason and records[-1].phase == "exploration"
    assert all(r.warning is None for r in records[:-1])
    assert [str(w.message) for w in caught] == [reason]


def test_a_pending_switch_at_the_end_of_the_run_says_why():
    sched = TwoPhaseLR(
        make_optimizer(),
        total_epochs=3,
        **QUICK_SWITCH,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        records = [sched.end_epoch(1.0, probe_died) for _ in range(3)]
    assert [r.decision for r in records] == ["none", "skipped", "skipped"]
    assert "probe died" in records[-1].warning
    assert "end of epoch 2 is waiting for a successful hmax probe" in records[-1].warning
    assert "2 failed in a row" in sched.exploration_unfinished()


def test_a_run_that_switched_has_nothing_to_report():
    records, _, sched = run([1.0, 1.0, 1.0], {2: 1.0, 3: 1.0}, plateau_patience=1, total_epochs=3)
    assert sched.exploration_unfinished() is None
    assert records[-1].warning is None


def test_non_finite_loss_makes_no_decision_and_keeps_state():
    losses = [1.0, 0.9, math.nan, 0.9, math.inf, 0.9, 0.95]
    # patience 2: nan/inf epochs neither improve nor count as bad: bad epochs at 4 and 6 -> plateau at 6
    records, probe, sched = run(losses, {}, plateau_patience=2, extra_epochs_ratio=5)
    assert [r.decision for r in records] == [
        "none",
        "none",
        "skipped",
        "none",
        "skipped",
        "plateau",
        "none",
    ]
    assert records[2].warning and "nan" in records[2].warning
    assert sched.decision.best_loss == 0.9
    assert probe.calls == []


def test_non_finite_or_failing_probe_in_convergence():
    losses = [1.0, 1.0, 0.9, 1.0, 1.1, 1.2]
    hmax = {3: 1.0, 4: math.nan, 5: RuntimeError("probe died"), 6: 2.0}
    records, probe, sched = run(losses, hmax, plateau_patience=1)
    assert [r.decision for r in records[2:]] == ["switch", "skipped", "skipped", "decay"]
    assert "nan" in records[3].warning and "probe died" in records[4].warning
    assert records[3].hmax is None
    # e6 compares with the last good epoch (3): h 1 -> 2, f 0.9 -> 1.2
    assert sched.get_last_lr() == [0.5]
    assert sched.decision.h_prev == 0.0


def test_non_finite_probe_postpones_the_switch():
    losses = [1.0, 1.0, 0.9, 0.9, 0.9]
    records, probe, _ = run(losses, {3: math.inf, 4: 1.5, 5: 1.0}, plateau_patience=1)
    assert [r.decision for r in records] == ["none", "plateau", "skipped", "switch", "keep"]
    assert records[3].phase == "convergence"
    assert probe.calls == [3, 4, 5]


def test_non_finite_warns():
    sched = TwoPhaseLR(make_optimizer(), steps_per_epoch=1, total_epochs=10)
    with pytest.warns(RuntimeWarning, match="training loss is nan"):
        sched.end_epoch(math.nan, lambda: 1.0)


def test_warmup_step_by_step():
    opt = make_optimizer(lr=0.8, groups=2)
    sched = TwoPhaseLR(opt, steps_per_epoch=2, total_epochs=10, warmup_epochs=2)
    seen = [sched.get_last_lr()]
    for _ in range(5):
        sched.step()
        seen.append(sched.get_last_lr())
    expected = [[0.8 * f, 1.6 * f] for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)]
    assert [lr for pair in seen for lr in pair] == pytest.approx(
        [lr for pair in expected for lr in pair]
    )


def test_warmup_start_factor_and_fractional_epochs():
    sched = TwoPhaseLR(
        make_optimizer(),
        steps_per_epoch=4,
        total_epochs=10,
        warmup_epochs=1.25,
        warmup_start_factor=0.5,
    )
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    assert lrs == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0, 1.0])


def test_decay_during_warmup_multiplies():
    sched = TwoPhaseLR(
        make_optimizer(),
        steps_per_epoch=2,
        total_epochs=10,
        warmup_epochs=4,
        max_exploration_epochs=2,
    )
    sched.step()
    sched.step()
    sched.end_epoch(1.0, lambda: 1.0)
    sched.end_epoch(1.0, lambda: 1.0)  # forced switch (no plateau can be seen during warmup)
    sched.end_epoch(1.1, lambda: 2.0)  # decay
    assert sched.get_last_lr() == pytest.approx([0.5 * 3 / 8])


def test_step_accepts_deepspeed_arguments():
    sched = TwoPhaseLR(make_optimizer(), steps_per_epoch=1, total_epochs=10, warmup_epochs=4)
    sched.step()
    sched.step(256)  # DeepSpeed's fallback call
    sched.step(increment=1)
    assert sched.last_step == 3


@pytest.mark.parametrize(
    "patience,total,expected",
    [(0.05, 100, 5), (0.05, 90, 5), (0.051, 100, 6), (0.05, 30, 2), (0.01, 10, 1), (7, 100, 7)],
)
def test_patience_resolution(patience, total, expected):
    assert resolve_patience(patience, total) == expected
    sched = TwoPhaseLR(
        make_optimizer(), steps_per_epoch=1, total_epochs=total, plateau_patience=patience
    )
    assert sched.patience == expected


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"decay_factor": 1.0}, "decay_factor"),
        ({"decay_factor": 0.0}, "decay_factor"),
        ({"plateau_patience": -1}, "plateau_patience"),
        ({"plateau_patience": 2.5}, "plateau_patience"),
        ({"extra_epochs_ratio": -0.1}, "extra_epochs_ratio"),
        ({"min_lr": 2.0}, "min_lr"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_start_factor": 1.5}, "warmup_start_factor"),
        ({"max_exploration_epochs": 0}, "max_exploration_epochs"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"total_epochs": "90"}, "total_epochs"),
        ({"plateau_threshold": 1.0}, "plateau_threshold"),
        ({"probe_max_failures": 0}, "probe_max_failures"),
        ({"probe_max_failures": 1.5}, "probe_max_failures"),
        ({"warmup_epochs": math.inf}, "warmup_epochs"),
        ({"warmup_epochs": [1]}, "warmup_epochs"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {"steps_per_epoch": 1, "total_epochs": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        TwoPhaseLR(make_optimizer(), **args)


def test_state_dict_round_trip_mid_convergence_continues_identically():
    losses = [1.0, 1.0, 0.9, 1.0, 1.1, 1.05, 1.2, 1.3, 1.25, 1.4]
    hmax = {e: 1.0 + 0.5 * e for e in range(3, 11)}
    # warmup 2: epoch 3 sets the best loss, 4 plateaus and switches (alpha 0), 5 decays
    kw = dict(
        steps_per_epoch=3,
        total_epochs=20,
        warmup_epochs=2,
        plateau_patience=1,
        extra_epochs_ratio=0,
    )
    a = TwoPhaseLR(make_optimizer(groups=2), **kw)

    def epoch(s, e):
        for _ in range(3):
            s.step()
        return s.end_epoch(losses[e - 1], lambda: hmax[e])

    for e in range(1, 6):
        epoch(a, e)
    assert a.phase == "convergence"
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    b = TwoPhaseLR(make_optimizer(groups=2), **kw)
    b.load_state_dict(state)
    assert b.get_last_lr() == a.get_last_lr()
    assert b.phase == "convergence" and b.epoch == 5
    for e in range(6, 11):
        ra, rb = epoch(a, e), epoch(b, e)
        assert ra == rb
        assert a.get_last_lr() == b.get_last_lr()
    assert a.state_dict() == b.state_dict()
    assert a.decision.num_decays == 3  # decays at epochs 5, 7 and 10: two after the resume


def test_state_saved_before_probe_failures_existed_still_loads():
    kw = dict(steps_per_epoch=1, total_epochs=20, warmup_epochs=0, plateau_patience=1)
    a = TwoPhaseLR(make_optimizer(), **kw)
    for loss, h in [(1.0, 1.0), (1.0, 1.0), (1.1, 2.0)]:
        a.end_epoch(loss, lambda h=h: h)
    old = json.loads(json.dumps(a.state_dict()))
    del old["decision"]["probe_failures"]
    b = TwoPhaseLR(make_optimizer(), **kw)
    b.load_state_dict(old)
    assert b.state_dict() == a.state_dict()
    assert b.end_epoch(1.2, lambda: 3.0) == a.end_epoch(1.2, lambda: 3.0)


def test_load_state_dict_rejects_other_scheduler_state():
    a = WarmupStepLR(make_optimizer(), steps_per_epoch=1, total_epochs=10)
    b = TwoPhaseLR(make_optimizer(), steps_per_epoch=1, total_epochs=10)
    with pytest.raises(ValueError, match="WarmupStepLR"):
        b.load_state_dict(a.state_dict())


def test_warmup_step_table():
    sched = WarmupStepLR(make_optimizer(), steps_per_epoch=2, total_epochs=8, warmup_epochs=1)
    lrs = []
    for _ in range(8 * 2):
        lrs.append(round(sched.get_last_lr()[0], 10))
        sched.step()
    # warmup 0.5, 1.0; epochs 1-4 at 1.0; decay x0.1 after epoch 4 (50%) and 6 (75%)
    assert lrs == [
        0.5,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.1,
        0.1,
        0.1,
        0.1,
        0.01,
        0.01,
        0.01,
        0.01,
    ]


def test_warmup_step_explicit_epochs_and_records():
    sched = WarmupStepLR(
        make_optimizer(),
        steps_per_epoch=1,
        total_epochs=10,
        warmup_epochs=0,
        milestones=[2, 5],
        gamma=0.5,
    )
    calls = []
    recs = []
    for _ in range(6):
        sched.step()
        recs.append(sched.end_epoch(1.0, lambda: calls.append(1) or 1.0))
    assert [r.lr for r in recs] == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert [r.decision for r in recs] == ["none", "decay", "none", "none", "decay", "none"]
    assert calls == []
    state = sched.state_dict()
    other = WarmupStepLR(
        make_optimizer(),
        steps_per_epoch=1,
        total_epochs=10,
        warmup_epochs=0,
        milestones=[2, 5],
        gamma=0.5,
    )
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.get_last_lr() == [0.25] and other.epoch == 6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gamma": 1.5}, "gamma"),
        ({"milestones": [5, 2]}, "increasing"),
        ({"milestones": [0]}, r"milestones\[0\]"),
        ({"milestones": "50"}, "milestones"),
    ],
)
def test_warmup_step_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupStepLR(make_optimizer(), steps_per_epoch=1, total_epochs=10, **kwargs)


def test_check_params_is_the_constructors_check_without_building():
    # Config validation asks the class; the engine's construction raises the same problem.
    assert TwoPhaseLR.check_params({"decay_factor": 0.5}, total_epochs=10, peak_lr=0.1) == []
    (problem,) = TwoPhaseLR.check_params({"decay_factor": 1.5})
    assert (problem.key, problem.problem) == ("decay_factor", "must be a number < 1, got 1.5")
    (problem,) = TwoPhaseLR.check_params({"min_lr": 0.5}, peak_lr=0.1)
    assert problem.key == "min_lr" and "peak LR (0.1)" in problem.problem
    assert TwoPhaseLR.check_params({"min_lr": 0.5}) == []  # peak unknown: checked when built
    (problem,) = TwoPhaseLR.check_params({"decay_factr": 0.5})
    assert problem.key == "decay_factr" and "did you mean 'decay_factor'" in problem.problem
    (problem,) = WarmupStepLR.check_params({"milestones": [0.9, 5]}, total_epochs=10)
    assert problem.key == "milestones" and "increasing" in problem.problem
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="decay_factor: must be a number < 1, got 1.5"):
        TwoPhaseLR(opt, steps_per_epoch=1, total_epochs=10, decay_factor=1.5)
