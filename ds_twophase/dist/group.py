"""The running process group: ranks, rank-0 output and the collectives, each a no-op or an
identity in a single process (part of :mod:`ds_twophase.dist`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as tdist

from ..errors import ConfigError


def is_distributed() -> bool:
    """True when a process group is initialised and has more than one rank."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def get_world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (1 without a process group)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return 1
    return tdist.get_world_size(group)


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (0 without a process group)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return 0
    return tdist.get_rank(group)


def is_rank_zero(group: Any = None) -> bool:
    """True on the rank that logs and writes files."""
    return get_rank(group) == 0


def print_rank_zero(message: str) -> None:
    """Print ``message`` on stdout, on rank 0 only."""
    if is_rank_zero():
        print(message, flush=True)


def warn_rank_zero(message: str) -> None:
    """Print a ``warning:`` line on stderr, on rank 0 only."""
    if is_rank_zero():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; a :class:`ConfigError` it
    raises is raised on every rank (decisions from files that only rank 0 may see)."""
    outcome: tuple[str, Any] | None = None
    if is_rank_zero():
        try:
            outcome = ("ok", fn())
        except ConfigError as exc:
            outcome = ("error", exc.problems)  # Problems pickle: keys survive the broadcast
    outcome = broadcast_object(outcome)
    assert outcome is not None  # rank 0 always sets it
    if outcome[0] == "error":
        raise ConfigError(outcome[1])
    return outcome[1]


def barrier(group: Any = None) -> None:
    """Wait for every rank of ``group``."""
    if is_distributed():
        tdist.barrier(group=group)


def release_deepspeed_shm() -> None:
    """Remove the name of this rank's DeepSpeed shared-memory all-reduce buffer.

    On CPU, DeepSpeed creates one ``/dev/shm/deepspeed_allreduce_buffer_*`` file per rank (tens of
    MiB) and never removes it, so every job leaves them behind until RAM runs out. Each rank maps
    every buffer while the process group starts, so once all ranks passed a barrier the names can
    go; the memory lives on until the processes exit, even when they are killed.
    """
    if not (tdist.is_available() and tdist.is_initialized()):
        return
    barrier()
    name = "_".join(
        [
            "/dev/shm/deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(get_rank()),
        ]
    )
    try:
        os.unlink(name)
    except OSError:
        pass


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (pickled; keep it small)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=_global_rank(src, group), group=group)
    return box[0]


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size(group)
    tdist.all_gather_object(out, obj, group=group)
    return out


def all_reduce_sum_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it.

    Collectives on gloo need CPU tensors and on nccl device tensors; the tensor is moved to the
    backend's device for the reduction and the result copied back.
    """
    return all_reduce_sum_start(tensor, group)()


def all_reduce_sum_start(tensor: torch.Tensor, group: Any = None) -> Callable[[], torch.Tensor]:
    """Start summing ``tensor`` over ranks in place (moved to the backend's device and back, as
    :func:`all_reduce_sum_` does); the returned function waits for the sum and returns
    ``tensor``. Work that does not need the sum can run in between, hiding the
    collective's latency (on gloo a small all-reduce costs far more than the arithmetic
    around it)."""
    if not is_distributed():
        return lambda: tensor
    device = _backend_device(group)
    moved = tensor if tensor.device == device else tensor.to(device)
    work = tdist.all_reduce(moved, op=tdist.ReduceOp.SUM, group=group, async_op=True)

    def wait() -> torch.Tensor:
        work.wait()
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    return wait


def broadcast_tensors_(tensors: Iterable[torch.Tensor], src: int = 0, group: Any = None) -> None:
    """Overwrite every tensor in place with rank ``src``'s values."""
    if not is_distributed():
        return
    device = _backend_device(group)
    for tensor in tensors:
        moved = tensor if tensor.device == device else tensor.to(device)
        tdist.broadcast(moved, src=_global_rank(src, group), group=group)
        if moved is not tensor:
            tensor.copy_(moved)


def all_reduce_sums(values: list[float], group: Any = None) -> list[float]:
    """Sum a short list of floats over ranks (float64) and return the sums."""
    t = torch.tensor(values, dtype=torch.float64)
    return all_reduce_sum_(t, group).tolist()


def all_reduce_max(value: float, group: Any = None) -> float:
    """The maximum of a float over ranks."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_backend_device(group))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=group)
    return float(t.item())


def any_rank(flag: bool, group: Any = None) -> bool:
    """True on every rank when ``flag`` is True on any rank (one all-reduce max of one number;
    how the ranks agree to stop after a signal reached some of them)."""
    return all_reduce_max(1.0 if flag else 0.0, group) > 0.0


@contextlib.contextmanager
def gathered_parameters(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Full values of ZeRO stage 3 partitioned ``params`` on every rank inside the block,
    partitioned again on exit. A collective: every rank of the data-parallel group must enter.
    Only for parameters that ZeRO-3 manages; the values must not be modified inside."""
    import deepspeed  # only ZeRO-3 callers need it

    # modifier_rank=0 makes DeepSpeed free the gathered memory on exit (None would keep it).
    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0):
        yield


def _global_rank(group_rank: int, group: Any) -> int:
    if group is None:
        return group_rank
    return tdist.get_global_rank(group, group_rank)


def _backend_device(group: Any) -> torch.device:
    backend = tdist.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
