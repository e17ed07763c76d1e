"""The epoch-end call: run the probe when the schedule needs it and apply the decision on every rank.

Library users with their own DeepSpeed loop call :func:`epoch_end` once per epoch on every rank;
the trainer does the same. The probe (:mod:`ds_twophase.probe`) only measures; the decision and
the ranks' agreement check on it live here, with the schedule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ds_twophase import dist, faults
from ds_twophase.probe.hessian import HessianProbe, reading_of
from ds_twophase.probe.outcome import ProbeOutcome
from ds_twophase.schedulers.base import EpochScheduler
from ds_twophase.schedulers.readings import Reading
from ds_twophase.schedulers.two_phase import EpochRecord

__all__ = ["EpochEnd", "RankDisagreement", "check_ranks_agree", "epoch_end", "schedule_digest"]


class RankDisagreement(RuntimeError):
    """Ranks hold different LRs or scheduler states after an epoch end."""


@dataclass
class EpochEnd:
    """The result of :func:`epoch_end` (identical on every rank)."""

    record: EpochRecord
    """The scheduler's decision record."""
    probe: ProbeOutcome | None
    """The probe's outcome when it ran this epoch, else ``None``."""


def epoch_end(
    engine: Any,
    train_loss: float,
    probe: HessianProbe | None = None,
    *,
    group: Any = None,
    train_loss_se: float | None = None,
) -> EpochEnd:
    """Apply the schedule's epoch-end decision on every rank; call once per epoch on all ranks.

    ``train_loss`` must be the epoch's mean training loss over all ranks and samples (e.g. from
    ``ds_twophase.dist.all_reduce_sums([loss_sum, count])``), ``train_loss_se`` its standard
    error (:func:`ds_twophase.trainer.epoch.loss_standard_error`; needed by ``rise: "significant"``
    with ``rise_loss: "epoch"``). The probe runs only when the
    schedule needs hmax; a failed probe makes no decision that epoch (the scheduler warns). After
    the decision every rank checks that all ranks hold the same LR and scheduler state and raises
    :class:`RankDisagreement` if not.
    """
    scheduler = engine.lr_scheduler
    if not isinstance(scheduler, EpochScheduler):
        raise TypeError(
            "epoch_end needs a ds_twophase scheduler (TwoPhaseLR or WarmupStepLR) on the engine, "
            f"got {type(scheduler).__name__}"
        )
    outcome: ProbeOutcome | None = None

    def hessian() -> Reading:
        nonlocal outcome
        if probe is None:
            raise RuntimeError("the schedule needs hmax but no HessianProbe was given to epoch_end")
        outcome = probe(engine.module, engine.device)
        if not outcome.ok:
            raise RuntimeError(outcome.error)
        return reading_of(outcome)

    record = scheduler.end_epoch(train_loss, hessian, train_loss_se)
    if faults.desync_at(record.epoch, dist.get_rank(group)):
        for param_group in scheduler.optimizer.param_groups:
            param_group["lr"] *= 0.5
    check_ranks_agree(scheduler, group=group)
    return EpochEnd(record, outcome)


def schedule_digest(scheduler: EpochScheduler) -> int:
    """A 52-bit digest of the scheduler state and the LRs in force (exact in a float64)."""
    text = json.dumps([scheduler.state_dict(), scheduler.get_last_lr()], sort_keys=True)
    return int(hashlib.sha256(text.encode()).hexdigest()[:13], 16)


def check_ranks_agree(scheduler: EpochScheduler, *, group: Any = None) -> None:
    """Raise :class:`RankDisagreement` unless every rank holds the same schedule state."""
    if not dist.is_distributed():
        return
    digest = float(schedule_digest(scheduler))
    if dist.all_reduce_max(digest, group) != -dist.all_reduce_max(-digest, group):
        raise RankDisagreement(
            f"ranks disagree on the LR schedule after epoch {scheduler.epoch} "
            f"(this rank: lr {scheduler.get_last_lr()}); stopping"
        )
