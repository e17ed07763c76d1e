"""The paper's two-phase schedule as an LR scheduler: :class:`TwoPhaseLR` applies the decisions of
:class:`~ds_twophase.schedulers.decision.TwoPhaseDecision` (Algorithm 1, as we read it; see that
module) to the param groups, on top of the per-step warmup and the ``min_lr`` floor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError, check_number
from .base import EpochScheduler
from .decision import (
    CONVERGENCE,
    CONVERGENCE_RULES,
    DEFAULT_RISE_Z,
    EXPLORATION,
    RISE_LOSSES,
    RISE_MODES,
    TwoPhaseDecision,
    resolve_patience,
)
from .readings import EpochDecision, Reading
from .unfinished import exploration_unfinished

__all__ = [
    "CONVERGENCE",
    "DEFAULT_MIN_LR_RATIO",
    "EXPLORATION",
    "EpochDecision",
    "EpochRecord",
    "Reading",
    "TwoPhaseDecision",
    "TwoPhaseLR",
    "resolve_patience",
]

DEFAULT_MIN_LR_RATIO = 0.1
"""Default floor of decayed LRs relative to each group's peak. Chosen on validation by the
pre-registered rule of docs/results.md (MNIST-1D hard testbed, two-phase + LARS, the paper's
rule, 8 seeds): 0.1 gave the best mean final validation accuracy, +1.39 points [+1.13, +1.65]
over no floor (0.01: +0.36); without a floor the rule decayed 12-26 times on noise, to
1.5e-8-2.4e-4 of the peak. 0 gives the paper's rule bit for bit."""


@dataclass
class EpochRecord:
    """What happened at one epoch end."""

    epoch: int
    """The epoch that just ended (1-based)."""
    phase: str
    """Phase after this epoch's decision: ``"exploration"`` or ``"convergence"``."""
    lr: float
    """LR of the first param group for the next step, after the decision."""
    decision: str
    """One of ``none`` (exploring), ``plateau`` (first plateau detected, switch scheduled),
    ``switch`` (entered convergence), ``decay`` (LR multiplied by beta), ``keep`` (convergence,
    no decay), ``floor`` (the rule asked for a decay but the floor, ``min_lr`` or
    ``min_lr_ratio``, already holds every LR: kept as a keep), ``skipped`` (non-finite input or failed probe: no decision)."""
    hmax: float | None = None
    """hmax if it was measured this epoch, else ``None``: the signed eigenvalue of largest
    magnitude of the probed Hessian block (negative when the most curved direction is concave)."""
    switched: bool = False
    """True in the epoch that entered the convergence phase."""
    switch_forced: bool = False
    """True in the switch epoch when ``max_exploration_epochs`` forced the switch before the
    plateau's planned switch epoch (or without any plateau)."""
    decayed: bool = False
    """True in an epoch whose decision decayed the LR."""
    plateau: bool = False
    """True in the epoch that completed the first plateau, whatever else happened in it (with
    ``extra_epochs_ratio`` giving alpha = 0 the same epoch switches, or its probe fails)."""
    hmax_se: float | None = None
    """Standard error of ``hmax`` (``None`` when not measured or unknown)."""
    probe_loss: float | None = None
    """Mean loss on the probe batch at the probe's weights, from the probe's forward pass."""
    probe_loss_se: float | None = None
    """Its standard error from the probe batch's per-sample losses."""
    loss_rise_z: float | None = None
    """The compared loss's rise since the last measurement in combined standard errors (the
    quantity ``rise: "significant"`` compares with ``rise_z``); ``None`` when not compared."""
    hmax_rise_z: float | None = None
    """The same for hmax."""
    switch_epoch: int | None = None
    """The epoch at whose end the switch is planned (once a plateau was seen or a limit is set)."""
    warning: str | None = None
    """Why no decision was made (``decision == "skipped"``), why the switch was forced without
    hmax, or, in the last epoch of the budget, why the run never left the exploration phase."""

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (for ``metrics.jsonl``)."""
        return asdict(self)


class TwoPhaseLR(EpochScheduler):
    """The two-phase Hessian-aware LR schedule of Lee, He and Avestimehr (Algorithm 1).

    LR per optimizer step = ``peak * warmup(step) * decay_scale``, floored at
    ``max(min_lr, min_lr_ratio * peak)`` once the LR has been decayed. The peak LR of each param
    group is its ``lr`` at construction.

    Args:
        optimizer: the optimizer whose param groups receive the LR.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        total_epochs: the epoch budget E.
        warmup_epochs: linear per-step warmup length in epochs (paper: 10; may be fractional).
            The plateau detector ignores the first ``ceil(warmup_epochs)`` epochs.
        warmup_start_factor: the warmup ramps from ``warmup_start_factor * peak`` (excluded) to
            the peak: step k of W uses ``peak * (s + (1 - s) * k / W)``. Default 0.0, so the first
            step uses ``peak / W`` (Goyal et al. 2017 start from the small-batch LR instead: set
            ``s = 1 / k`` for a k-times scaled LR).
        plateau_patience: epochs without improvement that make a plateau; below 1 a fraction
            of ``total_epochs`` rounded up (default 0.05, the paper's 5%).
        plateau_threshold: relative improvement needed: improved if ``loss < best * (1 - t)``.
        extra_epochs_ratio: after a plateau at epoch x explore ``floor(ratio * x + 0.5)`` more
            epochs (paper: 1/3).
        decay_factor: beta, the LR multiplier of a decay, in (0, 1) (paper: 0.5).
        min_lr: floor for decayed LRs (absolute, every group); must not exceed any peak LR. A
            decay it makes a no-op is recorded as ``floor`` and behaves as a keep.
        max_exploration_epochs: force the switch at the end of this epoch even without a
            plateau (``None``: never forced).
        probe_max_failures: after this many consecutive failed probes at a pending switch,
            switch without hmax (JSON: ``probe.max_failures``, passed on by
            the config's validation; default 3).
        min_lr_ratio: floor for decayed LRs relative to each group's peak, in [0, 1); with
            ``min_lr`` the larger floor wins. Not in the paper (0 is its rule, bit for bit);
            the default, :data:`DEFAULT_MIN_LR_RATIO`, was chosen on validation (issue 21).
        rise: ``"paper"`` (default: a rise is ``prev < now``) or ``"significant"`` (a rise
            counts only when it exceeds ``rise_z`` combined standard errors). Not in the paper.
        rise_z: the threshold of ``rise: "significant"`` (>= 0; 0 is the paper's comparison).
        rise_loss: the loss the rule compares: ``"epoch"`` (default, the paper: the epoch's
            mean training loss) or ``"probe_batch"`` (the loss on the fixed probe batch from
            the probe's own forward pass: a paired comparison).
        convergence: the convergence-phase rule: ``"hessian"`` (default, Algorithm 1),
            ``"late_step"`` (ablation: fixed x0.1 decays at 50% and 75% of the budget left
            after the switch; the probe never runs) or ``"loss_only"`` (ablation: decay when the
            compared loss rose, no hmax condition; the probe runs only for
            ``rise_loss: "probe_batch"``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        total_epochs: int,
        warmup_epochs: float = 10,
        warmup_start_factor: float = 0.0,
        plateau_patience: float = 0.05,
        plateau_threshold: float = 0.0,
        extra_epochs_ratio: float = 1 / 3,
        decay_factor: float = 0.5,
        min_lr: float = 0.0,
        max_exploration_epochs: int | None = None,
        probe_max_failures: int = 3,
        min_lr_ratio: float = DEFAULT_MIN_LR_RATIO,
        rise: str = "paper",
        rise_z: float = DEFAULT_RISE_Z,
        rise_loss: str = "epoch",
        convergence: str = "hessian",
    ) -> None:
        peak = min((float(g["lr"]) for g in optimizer.param_groups), default=None)
        self.check_hyperparams(
            peak,
            steps_per_epoch=steps_per_epoch,
            total_epochs=total_epochs,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=warmup_start_factor,
            plateau_patience=plateau_patience,
            plateau_threshold=plateau_threshold,
            extra_epochs_ratio=extra_epochs_ratio,
            decay_factor=decay_factor,
            min_lr=min_lr,
            max_exploration_epochs=max_exploration_epochs,
            probe_max_failures=probe_max_failures,
            min_lr_ratio=min_lr_ratio,
            rise=rise,
            rise_z=rise_z,
            rise_loss=rise_loss,
            convergence=convergence,
        )
        self.min_lr = float(min_lr)
        self.min_lr_ratio = float(min_lr_ratio)
        self.decision = TwoPhaseDecision(
            total_epochs=int(total_epochs),
            patience=resolve_patience(plateau_patience, int(total_epochs)),
            threshold=float(plateau_threshold),
            extra_epochs_ratio=float(extra_epochs_ratio),
            decay_factor=float(decay_factor),
            max_exploration_epochs=None
            if max_exploration_epochs is None
            else int(max_exploration_epochs),
            warmup_epochs=float(warmup_epochs),
            max_probe_failures=int(probe_max_failures),
            decay_is_noop=self._decay_is_noop,
            rise=rise,
            rise_z=float(rise_z),
            rise_loss=rise_loss,
            convergence=convergence,
        )
        super().__init__(
            optimizer,
            steps_per_epoch=steps_per_epoch,
            total_epochs=total_epochs,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=warmup_start_factor,
        )

    @classmethod
    def check_hyperparams(cls, peak_lr: float | None, **args: Any) -> None:
        """The base checks, then this schedule's own (``min_lr`` against ``peak_lr``)."""
        super().check_hyperparams(peak_lr, **args)
        patience = args["plateau_patience"]
        check_number("plateau_patience", patience, low=0, low_open=True)
        if patience >= 1:
            check_number("plateau_patience", patience, integer=True)
        check_number("plateau_threshold", args["plateau_threshold"], low=0, high=1, high_open=True)
        check_number("extra_epochs_ratio", args["extra_epochs_ratio"], low=0)
        check_number(
            "decay_factor", args["decay_factor"], low=0, high=1, low_open=True, high_open=True
        )
        min_lr = args["min_lr"]
        check_number("min_lr", min_lr, low=0)
        check_number(
            "max_exploration_epochs",
            args["max_exploration_epochs"],
            low=1,
            integer=True,
            optional=True,
        )
        check_number("probe_max_failures", args["probe_max_failures"], low=1, integer=True)
        if peak_lr is not None and min_lr > peak_lr:
            raise ConfigError(
                key="min_lr", problem=f"{min_lr} must not exceed the peak LR ({peak_lr})"
            )
        check_number("min_lr_ratio", args["min_lr_ratio"], low=0, high=1, high_open=True)
        check_number("rise_z", args["rise_z"], low=0)
        for key, allowed in (
            ("rise", RISE_MODES),
            ("rise_loss", RISE_LOSSES),
            ("convergence", CONVERGENCE_RULES),
        ):
            if args[key] not in allowed:
                choices = ", ".join(f'"{a}"' for a in allowed)
                raise ConfigError(key=key, problem=f"must be one of {choices}, got {args[key]!r}")
        if args["convergence"] == "late_step" and args["rise_loss"] != "epoch":
            raise ConfigError(
                key="rise_loss",
                problem="late_step compares no loss (its decays are fixed); remove rise_loss "
                "or choose another convergence rule",
            )

    @property
    def phase(self) -> str:
        """``"exploration"`` or ``"convergence"``."""
        return self.decision.phase

    @property
    def epoch(self) -> int:
        """Completed epochs as counted by :meth:`end_epoch`."""
        return self.decision.epoch

    @property
    def patience(self) -> int:
        """The resolved plateau patience in epochs."""
        return self.decision.patience

    def _scale(self) -> float:
        return self.decision.scale

    def _floor(self, lr: float, base: float, scale: float | None = None) -> float:
        scale = self.decision.scale if scale is None else scale
        if scale >= 1.0:
            return lr
        # With min_lr_ratio 0 this is max(lr, min_lr) exactly: the paper's rule, bit for bit.
        return max(lr, self.min_lr, self.min_lr_ratio * base)

    def _decay_is_noop(self, scale: float, after: float) -> bool:
        # The post-warmup LRs before and after the decay, computed as lrs() computes them.
        return all(
            self._floor(base * after, base, after) == self._floor(base * scale, base, scale)
            for base in self.base_lrs
        )

    def exploration_unfinished(self) -> str | None:
        """Why the run is still in the exploration phase, else ``None``. After the last epoch a
        reason means the LR never left its peak: no plateau within the budget and no
        ``max_exploration_epochs``, a switch planned after the last epoch, or a switch still
        waiting for a probe. The record of epoch ``total_epochs`` carries the same text in its
        ``warning``."""
        return exploration_unfinished(self.decision)

    def end_epoch(
        self,
        train_loss: float,
        hessian: Callable[[], float | Reading],
        train_loss_se: float | None = None,
    ) -> EpochRecord:
        """Apply Algorithm 1 at the end of an epoch; call once per epoch on every rank.

        ``train_loss`` is the epoch's mean training loss over all ranks, ``train_loss_se`` its
        standard error (needed by ``rise: "significant"`` with ``rise_loss: "epoch"``);
        ``hessian`` returns the principal eigenvalue, or a :class:`Reading` with its standard
        error and the probe-batch loss, and is called only in the epochs that need it (the
        switch epoch and every convergence epoch, never with ``convergence: "late_step"``),
        exactly once there. The param groups hold the new LR when this returns.
        """
        out = self.decision.end_epoch(train_loss, hessian, train_loss_se)
        warning = out.warning
        if self.decision.epoch == self.total_epochs:
            unfinished = self.exploration_unfinished()
            if unfinished is not None:
                warning = unfinished if warning is None else f"{warning}; {unfinished}"
        if warning is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        self.apply_lr()
        reading = out.reading
        return EpochRecord(
            epoch=self.decision.epoch,
            phase=self.decision.phase,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            decision=out.decision,
            hmax=out.hmax,
            switched=out.decision == "switch",
            switch_forced=out.switch_forced,
            decayed=out.decision == "decay",
            plateau=out.plateau,
            hmax_se=None if reading is None else reading.hmax_se,
            probe_loss=None if reading is None else reading.loss,
            probe_loss_se=None if reading is None else reading.loss_se,
            loss_rise_z=out.loss_rise_z,
            hmax_rise_z=out.hmax_rise_z,
            switch_epoch=self.decision.switch_epoch,
            warning=warning,
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable state (step count, peak LRs, decision state)."""
        state = super().state_dict()
        state["decision"] = self.decision.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the groups get the restored LR."""
        self._check_state(state)
        self.decision.load_state_dict(state["decision"])
        super().load_state_dict(state)
