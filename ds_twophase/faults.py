"""Documented test hooks that inject faults through environment variables, read in one place.

They exist so reliability tests can run the real trainer under the real launcher without editing
code. None is set in normal use.

* ``DS_TWOPHASE_PROBE_FAIL`` = ``rank<k>`` (raise on rank k; in "rank0" mode only rank 0
  computes, so only ``rank0`` has an effect there), ``all`` (raise on every computing rank) or
  ``nan`` (the probe loss is NaN on every computing rank), optionally followed by
  ``@<iteration>`` (default 0 = during setup, before the first HVP; k >= 1 = just before the
  k-th HVP). :func:`probe_fail_from_env` parses it for :func:`ds_twophase.probe.measure_hmax`.
* ``DS_TWOPHASE_NAN_LOSS=<epoch>:<micro-batch>[:<rank>]``: that micro-batch's training loss is
  NaN (on every rank, or only on ``rank``).
* ``DS_TWOPHASE_CRASH_IN_SAVE=<epoch>``: while saving the checkpoint of that epoch, rank 1 (rank 0
  in a one-rank run) dies right after DeepSpeed wrote its files and its ``latest`` pointer, before
  the checkpoint is marked complete.
* ``DS_TWOPHASE_SIGNAL_AT=<epoch>:<micro-batch>[:<rank>]``: right after that micro-batch's
  optimizer call the rank (every rank, or only ``rank``) sends itself SIGTERM, as a cluster
  pre-empting the job would.
* ``DS_TWOPHASE_FREEZE_AT=<epoch>:<micro-batch>[:<rank>]``: right after that micro-batch's
  optimizer call the rank stops itself (SIGSTOP), as a swapped-out or hung rank would: it
  stops answering without dying.
* ``DS_TWOPHASE_DISK_FULL=<metrics|checkpoint>:<epoch>``: writing that epoch's metrics row
  (after part of the line went out) or its checkpoint (after DeepSpeed wrote its files, before
  the checkpoint is marked complete) fails on rank 0 with ``ENOSPC``, as a full disk would.
* ``DS_TWOPHASE_DESYNC_AT=<epoch>``: after that epoch's decision rank 1 halves its LR, so the
  ranks disagree.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

NAN_LOSS_ENV = "DS_TWOPHASE_NAN_LOSS"
CRASH_IN_SAVE_ENV = "DS_TWOPHASE_CRASH_IN_SAVE"
DESYNC_ENV = "DS_TWOPHASE_DESYNC_AT"
SIGNAL_ENV = "DS_TWOPHASE_SIGNAL_AT"
FREEZE_ENV = "DS_TWOPHASE_FREEZE_AT"
DISK_FULL_ENV = "DS_TWOPHASE_DISK_FULL"
PROBE_FAIL_ENV = "DS_TWOPHASE_PROBE_FAIL"

FailHook = Callable[[int, int], None]
"""``fail_hook(rank, iteration)``: called on every computing rank of the Hessian probe before
iteration ``iteration`` (0 = setup); raising there injects a failure."""


def _ints(name: str) -> list[int] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return [int(part) for part in raw.split(":")]
    except ValueError:
        raise ValueError(f"{name} must be integers separated by ':', got {raw!r}") from None


def _micro_batch_hook(name: str, epoch: int, micro_batch: int, rank: int) -> bool:
    # ``<epoch>:<micro-batch>[:<rank>]``: every rank, or only ``rank``.
    spec = _ints(name)
    if spec is None:
        return False
    target_rank = spec[2] if len(spec) > 2 else rank
    return spec[0] == epoch and spec[1] == micro_batch and target_rank == rank


def nan_loss_at(epoch: int, micro_batch: int, rank: int) -> bool:
    """True when the NaN-loss hook targets this epoch, micro-batch (0-based) and rank."""
    return _micro_batch_hook(NAN_LOSS_ENV, epoch, micro_batch, rank)


def signal_at(epoch: int, micro_batch: int, rank: int) -> bool:
    """True when the self-signal hook targets this epoch, micro-batch (0-based) and rank."""
    return _micro_batch_hook(SIGNAL_ENV, epoch, micro_batch, rank)


def freeze_at(epoch: int, micro_batch: int, rank: int) -> bool:
    """True when the freeze hook targets this epoch, micro-batch (0-based) and rank."""
    return _micro_batch_hook(FREEZE_ENV, epoch, micro_batch, rank)


def crash_in_save(epoch: int, rank: int, world_size: int) -> bool:
    """True on the rank that must die while saving the checkpoint of ``epoch``."""
    spec = _ints(CRASH_IN_SAVE_ENV)
    return spec is not None and spec[0] == epoch and rank == min(1, world_size - 1)


def disk_full_in(what: str, epoch: object, partial: Callable[[], object] | None = None) -> None:
    """Raise ``OSError(ENOSPC)`` when the disk-full hook targets writing ``what`` for ``epoch``
    (calling ``partial`` first: the part of the write that went out before the disk filled)."""
    spec = os.environ.get(DISK_FULL_ENV, "").strip()
    if not spec:
        return
    m = re.fullmatch(r"(metrics|checkpoint):(\d+)", spec)
    if m is None:
        raise ValueError(
            f"{DISK_FULL_ENV} must be metrics:<epoch> or checkpoint:<epoch>, got {spec!r}"
        )
    if m.group(1) == what and int(m.group(2)) == epoch:
        if partial is not None:
            partial()
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by {DISK_FULL_ENV})")


def desync_at(epoch: int, rank: int) -> bool:
    """True on rank 1 after the epoch whose schedule must be made to disagree."""
    spec = _ints(DESYNC_ENV)
    return spec is not None and spec[0] == epoch and rank == 1


def probe_fail_from_env() -> tuple[FailHook | None, bool]:
    """``(fail_hook, nan_loss)`` from ``DS_TWOPHASE_PROBE_FAIL`` (see the module docstring)."""
    spec = os.environ.get(PROBE_FAIL_ENV, "").strip()
    if not spec:
        return None, False
    m = re.fullmatch(r"(rank(\d+)|all|nan)(?:@(\d+))?", spec)
    if m is None:
        raise ValueError(
            f"{PROBE_FAIL_ENV} must be rank<k>, all or nan, optionally @<iteration>; got {spec!r}"
        )
    when = int(m.group(3) or 0)
    if m.group(1) == "nan":
        return None, True
    target = None if m.group(1) == "all" else int(m.group(2))

    def hook(rank: int, iteration: int) -> None:
        if iteration == when and (target is None or rank == target):
            raise RuntimeError(f"injected probe failure ({PROBE_FAIL_ENV}={spec}) on rank {rank}")

    return hook, False
