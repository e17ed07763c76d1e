"""The trainer's epoch-end decision: :func:`~ds_twophase.schedulers.end_of_epoch.epoch_end` on
every rank, its warning logged once, its record and the probe's outcome as metrics columns."""

from __future__ import annotations

import warnings
from typing import Any

from .. import dist
from ..probe import HessianProbe
from ..probe.hessian import probe_columns
from ..schedulers import EpochScheduler
from ..schedulers.end_of_epoch import RankDisagreement, epoch_end
from .epoch import TrainingStopped


def decide(
    engine: Any, probe: HessianProbe | None, train_loss: float, train_loss_se: float | None
) -> tuple[dict[str, Any], float, bool]:
    """The epoch-end decision's metrics columns (all ``None`` for a per-step scheduler), the
    seconds the probe took and whether the schedule's probe ran. Ranks that disagree on the
    schedule afterwards stop the run (:class:`TrainingStopped`)."""
    if not isinstance(engine.lr_scheduler, EpochScheduler):
        return {"phase": None, "hmax": None, "decision": None}, 0.0, False
    with warnings.catch_warnings():
        # The decision's warning is logged once below, by rank 0 only.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            end = epoch_end(engine, train_loss, probe, train_loss_se=train_loss_se)
        except RankDisagreement as exc:
            raise TrainingStopped(str(exc)) from None
    rec = end.record
    if rec.warning:
        dist.warn_rank_zero(rec.warning)
    columns = {
        **probe_columns(end.probe),
        "phase": rec.phase,
        # The decision's own readings (the probe's, as the schedule took them).
        "hmax": rec.hmax,
        "hmax_se": rec.hmax_se,
        "probe_loss": rec.probe_loss,
        "probe_loss_se": rec.probe_loss_se,
        "loss_rise_z": rec.loss_rise_z,
        "hmax_rise_z": rec.hmax_rise_z,
        "decision": rec.decision,
        "plateau": rec.plateau,
        "switch_forced": rec.switch_forced,
        "warning": rec.warning,
    }
    if end.probe is None:
        return columns, 0.0, False
    return columns, end.probe.seconds, True
