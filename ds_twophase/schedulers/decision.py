"""The paper's two-phase schedule (Algorithm 1) as a pure decision state machine (no torch).

Reading of Algorithm 1 (see DESIGN.md): epochs e = 1..E.

* Exploration: the LR stays at its (warmed-up) peak. The epoch loss feeds a plateau detector: an
  epoch improves if ``loss < best * (1 - threshold)``; the loss has plateaued when ``patience``
  consecutive epochs did not improve. First plateau at the end of epoch x -> train
  ``alpha = floor(ratio * x + 0.5)`` more epochs, then at the end of epoch ``x + alpha`` measure
  hmax, record ``h_prev = hmax, f_prev = loss`` and switch to convergence (no LR change).
* Convergence, every epoch end: measure hmax and the loss f; if ``h_prev > 0 and h_prev < hmax
  and f_prev < f`` multiply the LR by beta and set ``h_prev = 0`` (so no two consecutive decays);
  otherwise ``h_prev, f_prev = hmax, f``.

The plateau detector starts after warmup: the first ``ceil(warmup_epochs)`` epochs neither set
the best loss nor count as epochs without improvement. While the LR is still rising the loss can
stall or rise without the landscape having flattened; the paper's 10 warmup epochs of 200-300
never meet a plateau, but with a short budget or a high LR one seen there would cut exploration
short.

Additions the paper does not have: a ``min_lr`` floor (a decay it makes a no-op is recorded as
``floor`` and behaves as a keep); ``max_exploration_epochs`` forces the switch at the end of that
epoch (or at the planned switch epoch, whichever is first); a non-finite loss or eigenvalue makes
no decision that epoch (a warning, state untouched). A pending switch then happens at the next
epoch with finite values, but after ``max_probe_failures`` consecutive failed probes it happens
anyway (a loud warning; ``h_prev = 0``, so decays compare from the next successful probe on).
hmax is the signed eigenvalue of largest magnitude; a negative one never allows a decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXPLORATION = "exploration"
CONVERGENCE = "convergence"


def resolve_patience(plateau_patience: float, total_epochs: int) -> int:
    """Patience in epochs: below 1 it is a fraction of ``total_epochs``, rounded up."""
    if plateau_patience < 1:
        return max(1, math.ceil(plateau_patience * total_epochs - 1e-9))
    return int(plateau_patience)


@dataclass(frozen=True)
class EpochDecision:
    """What :meth:`TwoPhaseDecision.end_epoch` decided for one epoch."""

    decision: str
    """As :attr:`EpochRecord.decision`."""
    hmax: float | None = None
    """The eigenvalue measured this epoch, ``None`` when not measured or not usable."""
    warning: str | None = None
    """Why no decision was made, or why the switch was forced without hmax."""
    plateau: bool = False
    """True in the epoch that completed the first plateau."""


class TwoPhaseDecision:
    """Pure state machine of Algorithm 1: epoch losses and eigenvalues in, LR scale out.

    No torch and no processes: feed it ``end_epoch(loss, hessian)`` and read ``scale``.

    Args:
        total_epochs: the epoch budget E.
        patience: epochs without improvement that make a plateau.
        threshold: an epoch improves if ``loss < best * (1 - threshold)``.
        extra_epochs_ratio: after a plateau at epoch x explore ``floor(ratio * x + 0.5)`` more.
        decay_factor: beta.
        max_exploration_epochs: force the switch at the end of this epoch (``None``: never).
        warmup_epochs: the first ``ceil(warmup_epochs)`` epochs are not seen by the plateau
            detector.
        max_probe_failures: consecutive failed probes at a pending switch after which the
            switch happens without hmax.
        decay_is_noop: called with the scale before a decay; True when the LR floor makes that
            decay a no-op (recorded as ``floor``, which behaves as a keep). ``None``: never.
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
        warmup_epochs: float = 0.0,
        max_probe_failures: int = 3,
        decay_is_noop: Callable[[float], bool] | None = None,
    ) -> None:
        self.total_epochs = total_epochs
        self.patience = patience
        self.threshold = threshold
        self.extra_epochs_ratio = extra_epochs_ratio
        self.decay_factor = decay_factor
        self.max_exploration_epochs = max_exploration_epochs
        self.warmup_epochs = math.ceil(warmup_epochs)
        self.max_probe_failures = max_probe_failures
        self.decay_is_noop = decay_is_noop
        self.epoch = 0
        self.phase = EXPLORATION
        self.scale = 1.0
        self.best_loss: float | None = None
        self.bad_epochs = 0
        self.plateau_epoch: int | None = None
        self.h_prev = 0.0
        self.f_prev: float | None = None
        self.num_decays = 0
        self.probe_failures = 0

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

    def end_epoch(self, loss: float, hessian: Callable[[], float]) -> EpochDecision:
        """Advance one epoch; ``hessian`` is called only where the rule needs hmax, once."""
        self.epoch += 1
        if not _finite(loss):
            return EpochDecision(
                "skipped", warning=f"epoch {self.epoch}: training loss is {loss}; no LR decision"
            )
        if self.phase == EXPLORATION:
            return self._explore(float(loss), hessian)
        return self._converge(float(loss), hessian)

    def exploration_unfinished(self) -> str | None:
        """Why the schedule is still exploring (at the peak LR), else ``None``; meant for the end
        of a run, where staying in exploration means the LR was never decayed."""
        if self.phase != EXPLORATION:
            return None
        head = (
            f"still in the exploration phase after {self.epoch} epochs, so the LR never left "
            "its peak"
        )
        switch_at = self.switch_epoch
        if switch_at is not None and switch_at <= self.epoch:
            return (
                f"{head}: the switch due at the end of epoch {switch_at} is waiting for a "
                f"successful hmax probe ({self.probe_failures} failed in a row; the switch is "
                f"forced after {self.max_probe_failures}); see the probe warnings"
            )
        if self.plateau_epoch is not None:
            return (
                f"{head}: the plateau at epoch {self.plateau_epoch} put the switch at the end of "
                f"epoch {switch_at}, after the last epoch; lower extra_epochs_ratio or set a lower "
                "max_exploration_epochs"
            )
        after = f" after the {self.warmup_epochs} warmup epochs" if self.warmup_epochs else ""
        why = (
            f"the training loss did not plateau ({self.patience} epochs without improvement{after})"
        )
        if self.max_exploration_epochs is None:
            return (
                f"{head}: {why} and no max_exploration_epochs is set; set "
                "max_exploration_epochs or a smaller plateau_patience"
            )
        return (
            f"{head}: {why} and max_exploration_epochs ({self.max_exploration_epochs}) was not "
            "reached; lower max_exploration_epochs"
        )

    def _explore(self, loss: float, hessian: Callable[[], float]) -> EpochDecision:
        decision, plateau = "none", False
        # Warmup epochs are invisible to the detector: a rising LR can stall the loss.
        if self.plateau_epoch is None and self.epoch > self.warmup_epochs:
            if self.best_loss is None or loss < self.best_loss * (1.0 - self.threshold):
                self.best_loss = loss
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= self.patience:
                    self.plateau_epoch = self.epoch
                    decision, plateau = "plateau", True
        switch_at = self.switch_epoch
        if switch_at is None or self.epoch < switch_at:
            return EpochDecision(decision, plateau=plateau)
        hmax, problem = _measure(hessian)
        if problem is None:
            self.phase = CONVERGENCE
            self.h_prev, self.f_prev = hmax, loss
            self.probe_failures = 0
            return EpochDecision("switch", hmax, plateau=plateau)
        self.probe_failures += 1
        if self.probe_failures < self.max_probe_failures:
            warning = (
                f"epoch {self.epoch}: {problem}; phase switch postponed "
                f"({self.probe_failures} of {self.max_probe_failures} failures)"
            )
            return EpochDecision("skipped", warning=warning, plateau=plateau)
        # Staying in exploration would keep the peak LR to the end of the run; switch without
        # hmax and let the first successful probe only record h_prev/f_prev (h_prev = 0).
        self.phase = CONVERGENCE
        self.h_prev, self.f_prev = 0.0, None
        warning = (
            f"epoch {self.epoch}: {problem}; the hmax probe failed {self.probe_failures} times "
            "in a row at the pending phase switch (probe.max_failures), so the schedule "
            "SWITCHES TO THE CONVERGENCE PHASE WITHOUT hmax; LR decays compare from the next "
            "successful probe on"
        )
        self.probe_failures = 0
        return EpochDecision("switch", warning=warning, plateau=plateau)

    def _converge(self, loss: float, hessian: Callable[[], float]) -> EpochDecision:
        hmax, problem = _measure(hessian)
        if problem is not None:
            return EpochDecision(
                "skipped", warning=f"epoch {self.epoch}: {problem}; no LR decision"
            )
        if (
            self.h_prev > 0
            and self.h_prev < hmax
            and self.f_prev is not None
            and self.f_prev < loss
        ):
            if self.decay_is_noop is not None and self.decay_is_noop(self.scale):
                self.h_prev, self.f_prev = hmax, loss
                return EpochDecision("floor", hmax)
            self.scale *= self.decay_factor
            self.num_decays += 1
            self.h_prev = 0.0
            return EpochDecision("decay", hmax)
        self.h_prev, self.f_prev = hmax, loss
        return EpochDecision("keep", hmax)

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
            "probe_failures": self.probe_failures,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (state saved before ``probe_failures`` existed
        loads with no failures counted)."""
        self.epoch = int(state["epoch"])
        self.phase = str(state["phase"])
        self.scale = float(state["scale"])
        self.best_loss = None if state["best_loss"] is None else float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self.plateau_epoch = None if state["plateau_epoch"] is None else int(state["plateau_epoch"])
        self.h_prev = float(state["h_prev"])
        self.f_prev = None if state["f_prev"] is None else float(state["f_prev"])
        self.num_decays = int(state["num_decays"])
        self.probe_failures = int(state.get("probe_failures", 0))


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
