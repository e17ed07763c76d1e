"""Pre-emption without lost work: the stop signal, the ranks' agreement, the resumable exit.

A cluster stops a job with SIGTERM (SLURM also sends SIGUSR1 ahead of the time limit with
``--signal``), then SIGKILL after a grace period. :class:`StopFlag` turns both signals into a flag
(the handler does nothing else); the trainer asks :meth:`StopFlag.agreed` at every optimizer-step
boundary, one all-reduce max of the flag over the ranks (``dist.any_rank``), so every rank stops
after the same step even when only one got the signal. The trainer then saves a complete
checkpoint (mid-epoch: the checkpoint part :class:`MidEpoch` holds every rank's
:class:`~ds_twophase.trainer.epoch.EpochProgress`, the micro-batches done, the loss sums and the
RNG state) and raises :class:`Preempted`; the command exits with
:data:`EXIT_RESUMABLE` and ``--resume auto`` continues exactly where it stopped.

:class:`CheckpointTimer` is ``trainer.checkpoint_minutes``: rank 0's clock decides, at an epoch
end, whether a checkpoint is due, and every rank follows (bounds what a SIGKILL can lose).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from types import FrameType
from typing import Any

import torch

from .. import dist
from ..config.batch import Batch
from ..errors import ConfigError
from .epoch import EpochProgress

EXIT_RESUMABLE = 75
"""Exit status of a run stopped by a signal after saving a checkpoint (``EX_TEMPFAIL``: "try
again later"; ``launch/slurm.sbatch`` requeues the job on it)."""

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that stop a run at the next optimizer-step boundary."""


class Preempted(Exception):
    """The run stopped on a signal after saving a complete checkpoint; the message says where."""


class StopFlag:
    """A flag set by SIGTERM/SIGUSR1 while installed (``with StopFlag() as stop: ...``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        # Signal handlers can only be installed from the main thread; elsewhere (a library user's
        # worker thread) the run simply is not pre-emptible.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum  # only a flag: the training loop decides when to stop

    @property
    def requested(self) -> bool:
        """True once this rank got a stop signal."""
        return self.signum is not None

    def agreed(self) -> bool:
        """True on every rank when any rank got a stop signal (a collective: every rank calls it
        at the same point)."""
        return dist.any_rank(self.requested)

    def name(self) -> str:
        """The signal's name (``SIGTERM``), or ``a signal on another rank``."""
        return (
            "a signal on another rank" if self.signum is None else signal.Signals(self.signum).name
        )


class CheckpointTimer:
    """``trainer.checkpoint_minutes``: is a checkpoint due at this epoch end? Rank 0's clock
    decides for every rank."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.last = time.monotonic()

    def due(self) -> bool:
        """True on every rank when ``minutes`` passed since the last checkpoint (a collective when
        ``minutes`` is set; always False otherwise)."""
        if self.minutes is None:
            return False
        return bool(dist.broadcast_object(time.monotonic() - self.last >= 60.0 * self.minutes))

    def saved(self) -> None:
        """A checkpoint was just written: the next one is due ``minutes`` from now."""
        self.last = time.monotonic()


class MidEpoch:
    """The checkpoint part ``partial``: where a run stopped inside an epoch, every rank's
    :class:`EpochProgress` (``None``: at an epoch end, nothing to save)."""

    def __init__(self) -> None:
        self.progress: EpochProgress | None = None

    def state_dict(self) -> dict[str, Any] | None:
        """Every rank's progress, gathered (a collective when there is progress: the ranks stop
        together); rank 0's return value is what gets written. Each rank's RNG state is the
        tensor ``rng_rank<r>``."""
        progress = self.progress
        if progress is None:
            return None
        gathered = dist.all_gather_object(
            (
                progress.micro_batches,
                progress.loss_sum,
                progress.finite,
                progress.rng_state,
                progress.loss_squares,
            )
        )
        return {
            "micro_batches": progress.micro_batches,
            "world_size": len(gathered),
            "loss_sums": [g[1] for g in gathered],  # JSON floats round-trip float64 exactly
            "finite": [g[2] for g in gathered],
            "loss_squares": [g[4] for g in gathered],
            **{f"rng_rank{r}": g[3] for r, g in enumerate(gathered)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This rank's progress from :meth:`state_dict` output."""
        rank = dist.get_rank()
        self.progress = EpochProgress(
            micro_batches=int(state["micro_batches"]),
            loss_sum=float(state["loss_sums"][rank]),
            finite=int(state["finite"][rank]),
            rng_state=torch.as_tensor(state[f"rng_rank{rank}"]).to(torch.uint8),
            # A checkpoint from before the standard error: that epoch's is unknown (NaN).
            loss_squares=float(state["loss_squares"][rank])
            if "loss_squares" in state
            else math.nan,
        )

    def take(self) -> EpochProgress | None:
        """The progress to continue from, once: the epoch after it starts from its beginning."""
        progress, self.progress = self.progress, None
        return progress


def world_size_note(state: dict[str, Any], path: str, *, zero_stage: int, batch: Batch) -> str:
    """``""`` when the checkpoint at ``path`` was saved on this many ranks (or does not say),
    else the words that report the change; raises :class:`ConfigError` when the run cannot
    continue on another number of ranks (ZeRO-1/2 partitions, a mid-epoch checkpoint)."""
    saved = state.get("world_size")
    world = dist.get_world_size()
    if saved is None or saved == world:
        return ""
    fix = f"resume on {saved} rank(s)"
    if zero_stage in (1, 2):
        raise ConfigError(
            f"--resume: {path} was saved on {saved} rank(s) under ZeRO stage {zero_stage}, whose "
            f"optimizer state is partitioned per rank; {fix}, or use ZeRO stage 0 to change "
            "the number of ranks"
        )
    if state.get("partial") is not None:
        raise ConfigError(
            f"--resume: {path} was saved mid-epoch on {saved} rank(s) (the rest of that epoch "
            f"is ordered for {saved} ranks); {fix}, or give the previous epoch's checkpoint "
            "with --resume PATH"
        )
    return (
        f"world size changed from {saved} to {world} rank(s) (global batch {batch.train} = "
        f"micro-batch {batch.micro} x accumulation {batch.gas} x {world} rank(s)); "
    )
