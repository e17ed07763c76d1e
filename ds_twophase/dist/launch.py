"""The process group's life (part of :mod:`ds_twophase.dist`): before it exists, what the
launcher announces in environment variables (:func:`launcher_rank`, :func:`launch_world_size`,
:func:`set_threads`); starting it (:func:`init_process_group`, also for a plain
``python script.py`` without a launcher); a failed collective (:func:`collective_place`); and
ending it (:func:`shutdown`, :func:`exit_process`, :func:`settle`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import torch
import torch.distributed as tdist

from ..errors import ConfigError, one_line
from .group import get_rank, release_deepspeed_shm

# Where launchers put this process's global rank: torchrun/deepspeed, Open MPI, MPICH/Intel
# MPI, Slurm tasks (first match wins).
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


# -- before the process group: what the launcher says ----------------------------------------
def launcher_rank() -> int | None:
    """This process's rank as its launcher announces it; ``None`` without a launcher (a plain
    ``python script.py``). An unreadable value counts as rank 0."""
    for var in RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                return 0
    return None


def launch_world_size() -> int | None:
    """The job's number of ranks as the launcher announces it (``WORLD_SIZE``), before the
    process group exists; ``None`` without a launcher."""
    try:
        world = int(os.environ.get("WORLD_SIZE", ""))
    except ValueError:
        return None
    return world if world >= 1 else None


def is_main_process() -> bool:
    """Rank 0 of the group once it runs, before that of the launcher's job; True without a
    launcher. Whoever prints errors that every rank finds asks this (one message per job)."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank() == 0
    return (launcher_rank() or 0) == 0


def set_threads() -> None:
    """Without OMP_NUM_THREADS, split the cores between the ranks of this node (the deepspeed
    launcher sets none, and two ranks with all cores each crawl on a small machine)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    ranks_here = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ranks_here)))


def single_process_env() -> None:
    """Without a launcher, describe a one-rank job (rank 0 of 1, a free local port) so DeepSpeed
    starts a group of one instead of going looking for MPI. Does nothing under a launcher."""
    if launcher_rank() is not None:
        return  # torchrun/deepspeed set everything; for MPI or Slurm DeepSpeed's discovery does
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def init_process_group(
    distributed_port: int | None = None,
    dist_init_required: bool | None = None,
    quiet: bool = False,
    timeout_minutes: float | None = None,
) -> None:
    """Start the default process group the way DeepSpeed does (``deepspeed.init_distributed``
    with the accelerator's backend), as a group of one rank when there is no launcher.

    Does nothing to a group that already runs. ``quiet`` also drops DeepSpeed's per-step INFO
    lines (the trainer's choice). ``timeout_minutes`` bounds every collective: a rank that
    stops answering makes the others fail with a :class:`CollectiveFailure` (gloo) or be torn
    down by NCCL's watchdog (``None``: DeepSpeed's default, 10 minutes or
    ``DEEPSPEED_TIMEOUT``). Afterwards the name of DeepSpeed's CPU shared-memory buffer is
    released (:func:`release_deepspeed_shm`). End the group with :func:`shutdown`.
    """
    from ..accelerator import select_cpu_accelerator, without_op_build_lines

    select_cpu_accelerator()  # a no-op when DeepSpeed is already imported
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if quiet:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    # Also for a group of one that already runs (a second run in the same process): DeepSpeed
    # reads LOCAL_RANK even when it does not start a group.
    if dist_init_required is not False and (
        not tdist.is_initialized() or tdist.get_world_size() == 1
    ):
        single_process_env()
    kwargs: dict[str, Any] = {"dist_init_required": dist_init_required}
    if distributed_port is not None:
        kwargs["distributed_port"] = distributed_port
    if timeout_minutes is not None:
        kwargs["timeout"] = datetime.timedelta(minutes=timeout_minutes)
    # NCCL: on a timed-out collective the watchdog tears the process down (PyTorch's default,
    # written out so that an inherited "0", which would wait forever, is visible in the env).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    with without_op_build_lines():
        deepspeed.init_distributed(
            dist_backend=get_accelerator().communication_backend_name(), verbose=not quiet, **kwargs
        )
    release_deepspeed_shm()


_broken = False  # a collective failed: the group cannot be ended in order


def shutdown() -> None:
    """End the process group on this rank once no collective is left to run (every group
    DeepSpeed made too). Idempotent; a no-op without a group, and after a
    :class:`CollectiveFailure` (a peer is gone: there is nothing to end in order).

    Call it at the end of a script that drives its own loop (``ds_twophase.shutdown()``), after
    the last collective. gloo's worker threads end when the last reference to the group goes;
    DeepSpeed's engine and caches hold references in reference cycles, hence the garbage
    collection here: afterwards no gloo thread is left to abort the interpreter's exit (see
    :func:`exit_process`) unless the caller still holds an engine.
    """
    if not (tdist.is_available() and tdist.is_initialized()) or _broken:
        return
    import deepspeed.comm as ds_comm

    if ds_comm.is_initialized():
        # DeepSpeed's own call also drops the groups it cached (a later init starts afresh).
        ds_comm.destroy_process_group()
    else:
        tdist.destroy_process_group()
    gc.collect()


def exit_process(code: int) -> NoReturn:
    """End this process with status ``code``: the process group (:func:`shutdown`), then
    Python's exit handlers (``atexit``: logging, monitors' writers, ...), then the process
    itself, without the interpreter's finalisation.

    Why: a gloo worker thread drops each collective's work after it completed. If it does so
    while the interpreter finalises, freeing the work's tensors takes the GIL, CPython ends the
    thread inside a C++ frame that may not unwind, and the process aborts (``terminate called
    without an active exception``, status -6) after all its work was done: a finished run
    reported as failed. :func:`shutdown` joins those threads when nothing else holds the group;
    skipping finalisation, and nothing else, closes the window whatever still does. For the
    entry points only: a library never ends its caller's process.
    """
    try:
        shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def settle(timeout_s: float = 60.0) -> None:
    """Wait, at most ``timeout_s``, until every rank got here: before a non-zero exit that every
    rank takes, so that the launcher, which ends the whole job when the first rank exits
    non-zero, cannot end rank 0 before it printed why. Before the process group exists (a
    refusal at validation) a gloo group is started for the wait, from the launcher's
    environment. gloo only (``monitored_barrier``, whose timeout is its own); a no-op without a
    launcher, for a group of another backend, and after a failed collective."""
    if _broken:
        return
    if not (tdist.is_available() and tdist.is_initialized()) and not _join_launch(timeout_s):
        return
    if tdist.get_world_size() == 1 or tdist.get_backend() != "gloo":
        return
    with contextlib.suppress(RuntimeError):
        tdist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))


def _join_launch(timeout_s: float) -> bool:
    """Start a gloo group of the launcher's ranks (``env://``: torchrun and the deepspeed
    launcher set it); False without one, or when the others do not come within ``timeout_s``."""
    world, rank = launch_world_size(), launcher_rank()
    if not tdist.is_available() or world is None or world < 2 or rank is None:
        return False
    if not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
        return False
    try:
        tdist.init_process_group(
            "gloo",
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, ValueError, OSError):
        return False
    return True


class CollectiveFailure(RuntimeError):
    """A collective did not complete: another rank stopped answering (the timeout passed) or
    died. The message is one line naming where this rank was."""


# Messages of the exceptions gloo raises when a peer stops answering or goes away (NCCL's
# watchdog ends the process itself).
_PEER_LOST = ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer")


def is_collective_failure(exc: BaseException) -> bool:
    """True for an exception a collective raises because another rank timed out or died."""
    if isinstance(exc, CollectiveFailure):
        return True
    backend_error = getattr(tdist, "DistBackendError", ())
    if backend_error and isinstance(exc, backend_error):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_LOST)


@contextlib.contextmanager
def collective_place(where: str | Callable[[], str]) -> Iterator[None]:
    """Turn a collective failure inside the block into one :class:`CollectiveFailure` line
    naming ``where`` (a string, or a function giving it when the failure happens) and what the
    backend said. The innermost place wins."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, CollectiveFailure) or not is_collective_failure(exc):
            raise
        global _broken
        _broken = True
        place = where() if callable(where) else where
        detail = one_line(exc)
        if detail.startswith("[") and "] " in detail:
            detail = detail.split("] ", 1)[1]  # drop gloo's source-file prefix
        raise CollectiveFailure(
            f"rank {get_rank()}: a collective failed at {place} ({detail}); another rank stopped "
            "answering or died"
        ) from None
