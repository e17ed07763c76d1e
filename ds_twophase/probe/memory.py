"""Peak tensor memory of a piece of code: how the probe's memory bound is measured (the probe
bench, ``bench/probe.py``, and ``tests/test_hessian.py`` use the same accounting)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["peak_bytes"]


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of the tensors ``fn`` allocates, above what was held before it ran.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated before. CPU: the
    profiler's allocation and free records replayed in order (tensor memory only, the same
    accounting for the probe and the training step; allocator caches and RSS are not counted).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (ev.start_ns(), ev.nbytes())
        for ev in prof.profiler.kineto_results.events()
        if ev.name() == "[memory]"
    )
    held = peak = 0
    for _, nbytes in records:
        held += nbytes
        peak = max(peak, held)
    return peak
