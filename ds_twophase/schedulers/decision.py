"""The paper's two-phase schedule (Algorithm 1) as a pure decision state machine (no torch).

Reading of Algorithm 1 (the paper's Section 3; README, "The schedule from JSON"): epochs
e = 1..E.

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

Options that are additions to the paper (their defaults give the paper's rule bit for bit):

* ``rise``: ``"paper"`` compares ``prev < now``; ``"significant"`` counts a rise only when
  ``now - prev > rise_z * sqrt(se_prev**2 + se_now**2)`` (the standard errors come in with the
  values; ``rise_z = 0`` is the paper's comparison). A rise whose standard error is unknown does
  not count with ``rise_z > 0`` (a warning says so).
* ``rise_loss``: which loss the rule compares: ``"epoch"`` (the epoch's mean training loss) or
  ``"probe_batch"`` (the loss on the fixed probe batch, from the probe's own forward pass).
* ``convergence``: ``"hessian"`` (Algorithm 1), ``"late_step"`` (after the switch, fixed decays
  by :data:`LATE_STEP_FACTOR` at the ends of epochs ``s + floor(p * (E - s) + 0.5)`` for ``p`` in
  :data:`LATE_STEP_POINTS`, ``s`` the switch epoch; no probe at all) or ``"loss_only"`` (the rule
  without its hmax condition; after a decay the next epoch only records, as in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .readings import EpochDecision, Reading, finite, measure, optional_float

EXPLORATION = "exploration"
CONVERGENCE = "convergence"
RISE_MODES = ("paper", "significant")
RISE_LOSSES = ("epoch", "probe_batch")
CONVERGENCE_RULES = ("hessian", "late_step", "loss_only")
DEFAULT_RISE_Z = 2.0
"""Default threshold of ``rise: "significant"``, in combined standard errors (unused by
``"paper"``); a starting point, not a value chosen by a study."""
LATE_STEP_FACTOR = 0.1
"""The LR multiplier of each fixed decay of ``convergence: "late_step"`` (the step baseline's)."""
LATE_STEP_POINTS = (0.5, 0.75)
"""Where ``late_step`` decays, as fractions of the budget left after the switch epoch."""


def resolve_patience(plateau_patience: float, total_epochs: int) -> int:
    """Patience in epochs: below 1 it is a fraction of ``total_epochs``, rounded up."""
    if plateau_patience < 1:
        return max(1, math.ceil(plateau_patience * total_epochs - 1e-9))
    return int(plateau_patience)


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
        decay_is_noop: called with the scales before and after a decay; True when the LR floor
            makes that decay a no-op (recorded as ``floor``, which behaves as a keep). ``None``:
            never.
        rise: ``"paper"`` or ``"significant"`` (see the module docstring).
        rise_z: the threshold of ``"significant"``, in combined standard errors.
        rise_loss: ``"epoch"`` or ``"probe_batch"``: the loss the rule compares.
        convergence: ``"hessian"``, ``"late_step"`` or ``"loss_only"``.
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
        decay_is_noop: Callable[[float, float], bool] | None = None,
        rise: str = "paper",
        rise_z: float = DEFAULT_RISE_Z,
        rise_loss: str = "epoch",
        convergence: str = "hessian",
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
        self.rise = rise
        self.rise_z = rise_z
        self.rise_loss = rise_loss
        self.convergence = convergence
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
        self.h_prev_se: float | None = None
        self.f_prev_se: float | None = None
        self.switched_at: int | None = None

    @property
    def planned_switch(self) -> int | None:
        """The switch epoch the first plateau planned (``None`` before a plateau)."""
        x = self.plateau_epoch
        return None if x is None else x + math.floor(self.extra_epochs_ratio * x + 0.5)

    @property
    def switch_epoch(self) -> int | None:
        """End of which epoch the switch happens (``None`` while unknown)."""
        planned = self.planned_switch
        if self.max_exploration_epochs is not None:
            planned = min(planned or self.max_exploration_epochs, self.max_exploration_epochs)
        return planned

    @property
    def needs_probe(self) -> bool:
        """Whether convergence-phase decisions (and the switch) call the probe."""
        if self.convergence == "late_step":
            return False
        return self.convergence == "hessian" or self.rise_loss == "probe_batch"

    def late_step_epochs(self) -> list[int]:
        """The epochs at whose end ``late_step`` decays (empty before the switch)."""
        s = self.switched_at
        if s is None:
            return []
        return [s + math.floor(p * (self.total_epochs - s) + 0.5) for p in LATE_STEP_POINTS]

    def end_epoch(
        self, loss: float, hessian: Callable[[], float | Reading], loss_se: float | None = None
    ) -> EpochDecision:
        """Advance one epoch; ``hessian`` is called only where the rule needs the probe, once.
        ``loss_se`` is the standard error of the epoch loss (``None``: unknown)."""
        self.epoch += 1
        if not finite(loss):
            return EpochDecision(
                "skipped", warning=f"epoch {self.epoch}: training loss is {loss}; no LR decision"
            )
        se = float(loss_se) if loss_se is not None and finite(loss_se) else None
        if self.phase == EXPLORATION:
            return self._explore(float(loss), se, hessian)
        return self._converge(float(loss), se, hessian)

    def _explore(
        self, loss: float, loss_se: float | None, hessian: Callable[[], float | Reading]
    ) -> EpochDecision:
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
        forced = self._cap_forced()
        if not self.needs_probe:
            self._switch(None, loss, loss_se)
            return EpochDecision("switch", plateau=plateau, switch_forced=forced)
        reading, problem = self._read(hessian)
        if reading is not None:
            self._switch(reading, loss, loss_se)
            return EpochDecision(
                "switch", reading.hmax, plateau=plateau, reading=reading, switch_forced=forced
            )
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
        self.switched_at = self.epoch
        self.h_prev, self.f_prev = 0.0, None
        self.h_prev_se = self.f_prev_se = None
        warning = (
            f"epoch {self.epoch}: {problem}; the hmax probe failed {self.probe_failures} times "
            "in a row at the pending phase switch (probe.max_failures), so the schedule "
            "SWITCHES TO THE CONVERGENCE PHASE WITHOUT hmax; LR decays compare from the next "
            "successful probe on"
        )
        self.probe_failures = 0
        return EpochDecision("switch", warning=warning, plateau=plateau, switch_forced=forced)

    def _cap_forced(self) -> bool:
        """A switch now is max_exploration_epochs' doing, not the plateau's plan."""
        cap, planned = self.max_exploration_epochs, self.planned_switch
        return cap is not None and self.epoch >= cap and (planned is None or planned > self.epoch)

    def _switch(self, reading: Reading | None, loss: float, loss_se: float | None) -> None:
        self.phase = CONVERGENCE
        self.switched_at = self.epoch
        self.probe_failures = 0
        self._remember(reading, loss, loss_se)

    def _remember(self, reading: Reading | None, loss: float, loss_se: float | None) -> None:
        """This epoch's values become the ones the next epoch compares with."""
        self.h_prev = 0.0 if reading is None else reading.hmax
        self.h_prev_se = None if reading is None else reading.hmax_se
        self.f_prev, self.f_prev_se = self._compared_loss(reading, loss, loss_se)

    def _compared_loss(
        self, reading: Reading | None, loss: float, loss_se: float | None
    ) -> tuple[float | None, float | None]:
        if self.rise_loss == "epoch":
            return loss, loss_se
        return (None, None) if reading is None else (reading.loss, reading.loss_se)

    def _read(self, hessian: Callable[[], float | Reading]) -> tuple[Reading | None, str | None]:
        """The probe's reading, or ``None`` and why it cannot be used."""
        reading, problem = measure(hessian)
        if reading is not None and self.rise_loss == "probe_batch" and not finite(reading.loss):
            return None, f"the probe gave no finite probe-batch loss ({reading.loss})"
        return reading, problem

    def _converge(
        self, loss: float, loss_se: float | None, hessian: Callable[[], float | Reading]
    ) -> EpochDecision:
        if self.convergence == "late_step":
            return self._late_step()
        reading = None
        if self.needs_probe:
            reading, problem = self._read(hessian)
            if reading is None:
                return EpochDecision(
                    "skipped", warning=f"epoch {self.epoch}: {problem}; no LR decision"
                )
        f, f_se = self._compared_loss(reading, loss, loss_se)
        notes: list[str] = []
        loss_rose, loss_z = False, None
        if self.f_prev is not None and f is not None:
            loss_rose, loss_z = self._rose("loss", self.f_prev, self.f_prev_se, f, f_se, notes)
        hmax_rose, hmax_z = True, None  # loss_only: no hmax condition
        hmax = None if reading is None else reading.hmax
        if self.convergence == "hessian" and reading is not None:
            hmax_rose = False
            if self.h_prev > 0:
                hmax_rose, hmax_z = self._rose(
                    "hmax", self.h_prev, self.h_prev_se, reading.hmax, reading.hmax_se, notes
                )
        warning = "; ".join(notes) if notes else None

        def out(decision: str) -> EpochDecision:
            return EpochDecision(
                decision, hmax, warning, reading=reading, loss_rise_z=loss_z, hmax_rise_z=hmax_z
            )

        if loss_rose and hmax_rose:
            after = self.scale * self.decay_factor
            if self.decay_is_noop is not None and self.decay_is_noop(self.scale, after):
                self._remember(reading, loss, loss_se)
                return out("floor")
            self.scale = after
            self.num_decays += 1
            # No two consecutive decays: the next epoch only records its values.
            self.h_prev = 0.0
            if self.convergence == "loss_only":
                self.f_prev = None
            return out("decay")
        self._remember(reading, loss, loss_se)
        return out("keep")

    def _rose(
        self,
        name: str,
        prev: float,
        prev_se: float | None,
        now: float,
        now_se: float | None,
        notes: list[str],
    ) -> tuple[bool, float | None]:
        """Whether ``now`` rose over ``prev`` under the ``rise`` rule, and the rise in combined
        standard errors (``None`` when they are unknown or zero)."""
        combined = None if prev_se is None or now_se is None else math.hypot(prev_se, now_se)
        z = (now - prev) / combined if combined else None
        if self.rise == "paper" or self.rise_z == 0:
            return prev < now, z
        if combined is None:
            notes.append(
                f"epoch {self.epoch}: the standard error of the {name} is unknown, so its rise "
                "does not count (rise: significant)"
            )
            return False, z
        return now - prev > self.rise_z * combined, z

    def _late_step(self) -> EpochDecision:
        due = sum(1 for m in self.late_step_epochs() if m == self.epoch)
        if due == 0:
            return EpochDecision("keep")
        after = self.scale * LATE_STEP_FACTOR**due
        if self.decay_is_noop is not None and self.decay_is_noop(self.scale, after):
            return EpochDecision("floor")
        self.scale = after
        self.num_decays += due
        return EpochDecision("decay")

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
            "h_prev_se": self.h_prev_se,
            "f_prev_se": self.f_prev_se,
            "switched_at": self.switched_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (state saved before ``probe_failures`` existed
        loads with no failures counted, and state saved before the standard errors existed with
        them unknown)."""
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
        self.h_prev_se = optional_float(state.get("h_prev_se"))
        self.f_prev_se = optional_float(state.get("f_prev_se"))
        switched = state.get("switched_at")
        self.switched_at = None if switched is None else int(switched)
