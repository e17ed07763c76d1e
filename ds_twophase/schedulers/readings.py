"""What the two-phase decision state machine (:mod:`.decision`) reads and returns, and the checks
it applies to its inputs: no torch, no state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reading:
    """One probe's outcome as the rule uses it; a ``hessian`` callable may return a plain float
    (hmax alone) instead."""

    hmax: float
    """The signed eigenvalue of largest magnitude."""
    hmax_se: float | None = None
    """Its standard error (``None``: unknown)."""
    loss: float | None = None
    """The mean loss on the probe batch at the probe's weights (``None``: not measured)."""
    loss_se: float | None = None
    """Its standard error from the per-sample losses (``None``: unknown)."""


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
    reading: Reading | None = None
    """The probe's reading when the probe ran and succeeded this epoch."""
    loss_rise_z: float | None = None
    """The compared loss's rise over its previous value in units of their combined standard
    error (``None``: not compared, or no standard error)."""
    hmax_rise_z: float | None = None
    """The same for hmax."""
    switch_forced: bool = False
    """True when this epoch's switch came at ``max_exploration_epochs`` before the plateau's
    planned switch epoch (or without any plateau)."""


def measure(hessian: Callable[[], float | Reading]) -> tuple[Reading | None, str | None]:
    """Call the probe once; a failure or a non-finite hmax becomes a reason, never state."""
    try:
        out = hessian()
        reading = out if isinstance(out, Reading) else Reading(float(out))
    except Exception as exc:  # a failed probe must not stop training or poison the state
        return None, f"hmax probe failed ({type(exc).__name__}: {exc})"
    if not math.isfinite(reading.hmax):
        return None, f"hmax is {reading.hmax}"
    return reading, None


def optional_float(x: Any) -> float | None:
    return None if x is None else float(x)


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
