"""The paper's two-phase schedule (Algorithm 1) as a pure decision state machine and an LR scheduler.

Reading of Algorithm 1 (see DESIGN.md): epochs e = 1..E.

* Exploration: the LR stays at its (warmed-up) peak. The epoch loss feeds a plateau detector: an
  epoch improves if ``loss < best * (1 - threshold)``; the loss has plateaued when ``patience``
  consecutive epochs did not improve. First plateau at the end of epoch x -> train
  ``alpha = floor(ratio * x + 0.5)`` more epochs, then at the end of epoch ``x + alpha`` measure
  hmax, record ``h_prev = hmax, f_prev = loss`` and switch to convergence (no LR change).
* Convergence, every epoch end: measure hmax and the loss f; if ``h_prev > 0 and h_prev < hmax
  and f_prev < f`` multiply the LR by beta and set ``h_prev = 0`` (so no two consecutive decays);
  otherwise ``h_prev, f_prev = hmax, f``.

Additions the paper does not have: a ``min_lr`` floor; ``max_exploration_epochs`` forces the
switch at the end of that epoch (or at the planned switch epoch, whichever is first); a non-finite
loss or eigenvalue makes no decision that epoch (a warning, state untouched). A pending switch
then happens at the next epoch with finite values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .base import EpochScheduler, check_number

EXPLORATION = "exploration"
CONVERGENCE = "convergence"


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
    no decay), ``skipped`` (non-finite input: no decision)."""
    hmax: float | None = None
    """The principal eigenvalue if it was measured this epoch, else ``None``."""
    switched: bool = False
    """True in the epoch that entered the convergence phase."""
    decayed: bool = False
    """True in an epoch whose decision decayed the LR."""
    switch_epoch: int | None = None
    """The epoch at whose end the switch is planned (once a plateau was seen or a limit is set)."""
    warning: str | None = None
    """Why no decision was made, when ``decision == "skipped"``."""

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (for ``metrics.jsonl``)."""
        return asdict(self)


def resolve_patience(plateau_patience: float, total_epochs: int) -> int:
    """Patience in epochs: below 1 it is a fraction of ``total_epochs``, rounded up."""
    if plateau_patience < 1:
        return max(1, math.ceil(plateau_patience * total_epochs - 1e-9))
    return int(plateau_patience)


class TwoPhaseDecision:
    """Pure state machine of Algorithm 1: epoch losses and eigenvalues in, LR scale out.

    No torch and no processes: feed it ``end_epoch(loss, hessian)`` and read ``scale``.
    """

    def __init__(
        self,
        *,
        total_epochs: int,
        patience: int,
        threshold: float,
        extra_epochs_ratio: float,
        decay_factor: float,
        max_exploration_epochs: int | None,
    ) -> None:
        self.total_epochs = total_epochs
        self.patience = patience
        self.threshold = threshold
        self.extra_epochs_ratio = extra_epochs_ratio
        self.decay_factor = decay_factor
        self.max_exploration_epochs = max_exploration_epochs
        self.epoch = 0
        self.phase = EXPLORATION
        self.scale = 1.0
        self.best_loss: float | None = None
        self.bad_epochs = 0
        self.plateau_epoch: int | None = None
        self.h_prev = 0.0
        self.f_prev: float | None = None
        self.num_decays = 0

    @property
    def switch_epoch(self) -> int | None:
        """End of which epoch the switch happens (``None`` while unknown)."""
        planned = None
        if self.plateau_epoch is not None:
            x = self.plateau_epoch
            planned = x + math.floor(self.extra_epochs_ratio * x + 0.5)
        if self.max_exploration_epochs is not None:
            planned = min(planned or self.max_exploration_epochs, self.max_exploration_epochs)
        return planned

    def end_epoch(
        self, loss: float, hessian: Callable[[], float]
    ) -> tuple[str, float | None, str | None]:
        """Advance one epoch; returns ``(decision, hmax or None, warning or None)``."""
        self.epoch += 1
        if not _finite(loss):
            return "skipped", None, f"epoch {self.epoch}: training loss is {loss}; no LR decision"
        if self.phase == EXPLORATION:
            return self._explore(float(loss), hessian)
        return self._converge(float(loss), hessian)

    def _explore(
        self, loss: float, hessian: Callable[[], float]
    ) -> tuple[str, float | None, str | None]:
        decision = "none"
        if self.plateau_epoch is None:
            if self.best_loss is None or loss < self.best_loss * (1.0 - self.threshold):
                self.best_loss = loss
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= self.patience:
                    self.plateau_epoch = self.epoch
                    decision = "plateau"
        switch_at = self.switch_epoch
        if switch_at is None or self.epoch < switch_at:
            return decision, None, None
        hmax, problem = _measure(hessian)
        if problem is not None:
            return "skipped", None, f"epoch {self.epoch}: {problem}; phase switch postponed"
        self.phase = CONVERGENCE
        self.h_prev, self.f_prev = hmax, loss
        return "switch", hmax, None

    def _converge(
        self, loss: float, hessian: Callable[[], float]
    ) -> tuple[str, float | None, str | None]:
        hmax, problem = _measure(hessian)
        if problem is not None:
            return "skipped", None, f"epoch {self.epoch}: {problem}; no LR decision"
        if (
            self.h_prev > 0
            and self.h_prev < hmax
            and self.f_prev is not None
            and self.f_prev < loss
        ):
            self.scale *= self.decay_factor
            self.num_decays += 1
            self.h_prev = 0.0
            return "decay", hmax, None
        self.h_prev, self.f_prev = hmax, loss
        return "keep", hmax, None

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable state."""
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            "scale": self.scale,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
            "plateau_epoch": self.plateau_epoch,
            "h_prev": self.h_prev,
            "f_prev": self.f_prev,
            "num_decays": self.num_decays,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.epoch = int(state["epoch"])
        self.phase = str(state["phase"])
        self.scale = float(state["scale"])
        self.best_loss = None if state["best_loss"] is None else float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self.plateau_epoch = None if state["plateau_epoch"] is None else int(state["plateau_epoch"])
        self.h_prev = float(state["h_prev"])
        self.f_prev = None if state["f_prev"] is None else float(state["f_prev"])
        self.num_decays = int(state["num_decays"])


class TwoPhaseLR(EpochScheduler):
    """The two-phase Hessian-aware LR schedule of Lee, He and Avestimehr (Algorithm 1).

    LR per optimizer step = ``peak * warmup(step) * decay_scale``, floored at ``min_lr`` once the
    LR has been decayed. The peak LR of each param group is its ``lr`` at construction.

    Args:
        optimizer: the optimizer whose param groups receive the LR.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        total_epochs: the epoch budget E.
        warmup_epochs: linear per-step warmup length in epochs (paper: 10; may be fractional).
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
        min_lr: floor for decayed LRs (absolute, every group); must not exceed any peak LR.
        max_exploration_epochs: force the switch at the end of this epoch even without a
            plateau (``None``: never forced).
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
    ) -> None:
        check_number("plateau_patience", plateau_patience, low=0, low_open=True)
        if plateau_patience >= 1:
            check_number("plateau_patience", plateau_patience, integer=True)
        check_number("plateau_threshold", plateau_threshold, low=0, high=1, high_open=True)
        check_number("extra_epochs_ratio", extra_epochs_ratio, low=0)
        check_number("decay_factor", decay_factor, low=0, high=1, low_open=True, high_open=True)
        check_number("min_lr", min_lr, low=0)
        if max_exploration_epochs is not None:
            check_number("max_exploration_epochs", max_exploration_epochs, low=1, integer=True)
        peak = min(float(g["lr"]) for g in optimizer.param_groups)
        if min_lr > peak:
            raise ConfigError(
                key="min_lr", problem=f"{min_lr} must not exceed the peak LR ({peak})"
            )
        self.min_lr = float(min_lr)
        self.decision = TwoPhaseDecision(
            total_epochs=int(total_epochs),
            patience=resolve_patience(plateau_patience, int(total_epochs)),
            threshold=float(plateau_threshold),
            extra_epochs_ratio=float(extra_epochs_ratio),
            decay_factor=float(decay_factor),
            max_exploration_epochs=None
            if max_exploration_epochs is None
            else int(max_exploration_epochs),
        )
        super().__init__(
            optimizer,
            steps_per_epoch=steps_per_epoch,
            total_epochs=total_epochs,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=warmup_start_factor,
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

    def _floor(self, lr: float) -> float:
        return max(lr, self.min_lr) if self.decision.scale < 1.0 else lr

    def end_epoch(self, train_loss: float, hessian: Callable[[], float]) -> EpochRecord:
        """Apply Algorithm 1 at the end of an epoch; call once per epoch on every rank.

        ``train_loss`` is the epoch's mean training loss over all ranks; ``hessian`` returns
        the principal eigenvalue and is called only in the epochs that need it (the switch
        epoch and every convergence epoch), exactly once there. The param groups hold the new
        LR when this returns.
        """
        decision, hmax, warning = self.decision.end_epoch(train_loss, hessian)
        if warning is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        self.apply_lr()
        return EpochRecord(
            epoch=self.decision.epoch,
            phase=self.decision.phase,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            decision=decision,
            hmax=hmax,
            switched=decision == "switch",
            decayed=decision == "decay",
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


def _measure(hessian: Callable[[], float]) -> tuple[float, str | None]:
    """Call the probe once; a failure or a non-finite value becomes a reason, never state."""
    try:
        hmax = float(hessian())
    except Exception as exc:  # a failed probe must not stop training or poison the state
        return math.nan, f"hmax probe failed ({type(exc).__name__}: {exc})"
    if not math.isfinite(hmax):
        return hmax, f"hmax is {hmax}"
    return hmax, None


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
