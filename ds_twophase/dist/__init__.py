"""The only package in ds_twophase that knows ranks, launchers and collectives.

Every function works in a single process (no process group initialised, or world size 1) and
is then a no-op or an identity, so library code can call these unconditionally instead of
sprinkling rank checks. ``group`` is the data-parallel process group (``None`` = the default
group, which is the data-parallel group for plain DeepSpeed data parallelism).

Two modules, used through this package (``from ds_twophase import dist``): ``launch``, the
group's life (what the launcher announces, starting it, a failed collective, ending it), and
``group``, the running group (ranks, rank-0 output such as :func:`print_rank_zero` and
:func:`on_rank_zero`, and the collectives).
"""

from __future__ import annotations

from .launch import (
    RANK_VARS,
    launcher_rank,
    launch_world_size,
    is_main_process,
    set_threads,
    single_process_env,
    init_process_group,
    shutdown,
    exit_process,
    settle,
    CollectiveFailure,
    is_collective_failure,
    collective_place,
)
from .group import (
    is_distributed,
    get_world_size,
    get_rank,
    is_rank_zero,
    print_rank_zero,
    warn_rank_zero,
    on_rank_zero,
    barrier,
    release_deepspeed_shm,
    broadcast_object,
    all_gather_object,
    all_reduce_sum_,
    all_reduce_sum_start,
    broadcast_tensors_,
    all_reduce_sums,
    all_reduce_max,
    any_rank,
    gathered_parameters,
)
__all__ = [
    "CollectiveFailure",
    "RANK_VARS",
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_sum_",
    "all_reduce_sum_start",
    "all_reduce_sums",
    "any_rank",
    "barrier",
    "broadcast_object",
    "broadcast_tensors_",
    "collective_place",
    "exit_process",
    "gathered_parameters",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_collective_failure",
    "is_distributed",
    "is_main_process",
    "is_rank_zero",
    "launch_world_size",
    "launcher_rank",
    "on_rank_zero",
    "print_rank_zero",
    "release_deepspeed_shm",
    "set_threads",
    "settle",
    "shutdown",
    "single_process_env",
    "warn_rank_zero",
]
