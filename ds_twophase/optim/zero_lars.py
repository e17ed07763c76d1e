"""LARS on DeepSpeed's flat ZeRO-1/2 partitions, with the per-layer trust ratios of the full model.

Under ZeRO stages 1 and 2 (and DeepSpeed's ``BF16_Optimizer``) every parameter group is
flattened into one fp32 tensor and each data-parallel rank keeps a slice of it: the optimizer's
group then holds one "parameter", the rank's partition, which starts and ends anywhere inside
the layers. DeepSpeed records where each model parameter lies in the partition
(``param._hp_mapping``, ``deepspeed/utils/tensor_fragment.py``): a fragment ``(start, numel)``,
or None when no part of the parameter is on this rank.

From that mapping each rank sums the squares of its fragments of every parameter (weights, and
gradients after DeepSpeed's unscaling and clipping); one all-reduce of a ``[2, n]`` float64
vector over the data-parallel group (``n`` parameters in the group) gives every rank every
layer's two norms, hence the same trust ratios as the unpartitioned model, and each rank
updates its fragments with their layer's ratio. Momentum buffers stay the size of the
partition. Groups with ``adapt=False`` need no norms: their update is elementwise, so the
ordinary path is already exact on a partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import dist
from .lars_update import (
    _CPU_LARGE_NUMEL,
    _CPU_SLICE_NUMEL,
    _FUSED_DEVICES,
    lars_slice_cpu,
    momentum_sgd,
    trust_ratios_from_norms,
)

__all__ = [
    "PartitionLayout",
    "check_layout",
    "find_layout",
    "on_every_rank",
    "partition_norms",
    "step_fragments",
    "trust_ratios_from_norms",
]


@dataclass
class PartitionLayout:
    """Where the parameters of one optimizer group lie in this rank's flat partition."""

    #: the flat fp32 partition (the single parameter DeepSpeed puts in the group)
    flat: Tensor
    #: number of parameters in the group, the same on every rank (the norm vector's length)
    count: int
    #: for each local fragment, the index of its parameter in the group
    index: list[int]
    #: for each local fragment, ``(start, numel)`` in ``flat``
    bounds: list[tuple[int, int]]
    #: the data-parallel process group the partition is split over (None: the default group)
    group: Any
    #: number of elements of each parameter of the group
    numels: list[int]
    #: ``index`` as a tensor on the partition's device (built once)
    index_tensor: Tensor | None = None
    #: the CPU update's work list (``cpu_chunks``, built on the first step)
    chunks: list[list[tuple[int, int, int]]] | None = None

    def indices(self) -> Tensor:
        """``index`` as a long tensor on ``flat``'s device."""
        if self.index_tensor is None:
            self.index_tensor = torch.tensor(self.index, device=self.flat.device)
        return self.index_tensor


def find_layout(flat: Tensor, lp_groups: Sequence[Sequence[Tensor]]) -> PartitionLayout | None:
    """The layout of ``flat`` among the original (model) parameter groups ``lp_groups``.

    A parameter belongs to ``flat`` when DeepSpeed's fragment of it is a view of ``flat``'s
    storage. None when no parameter of any group maps into ``flat`` (not a ZeRO-1/2 partition,
    or a rank that holds none of the group's elements).
    """
    storage = flat.untyped_storage().data_ptr()
    for lp_group in lp_groups:
        trainable = [p for p in lp_group if p.requires_grad]
        index, bounds, owner = [], [], None
        for i, p in enumerate(trainable):
            mapping = getattr(p, "_hp_mapping", None)
            if mapping is None:
                continue
            if mapping.hp_fragment.untyped_storage().data_ptr() != storage:
                break  # another group's partition
            address = mapping.get_hp_fragment_address()
            index.append(i)
            bounds.append((int(address.start), int(address.numel)))
            owner = owner or getattr(p, "_zero_optimizer", None)
        if index:
            group = _dp_group(flat, owner)
            numels = [p.numel() for p in trainable]
            return PartitionLayout(flat, len(trainable), index, bounds, group, numels)
    return None


def _dp_group(flat: Tensor, owner: Any) -> Any:
    """The process group DeepSpeed split ``flat`` over.

    ZeRO-1/2 (``DeepSpeedZeroOptimizer``) links each parameter to itself and keeps one group per
    optimizer group; ``BF16_Optimizer`` does not, and partitions over the sequence-data-parallel
    group (the data-parallel group without sequence parallelism), which the engine passes it.
    """
    if owner is not None:
        for i, partition in enumerate(getattr(owner, "single_partition_of_fp32_groups", [])):
            if partition is flat:
                return owner.real_dp_process_group[i]
    from deepspeed.utils import groups  # only partitioned (hence DeepSpeed) runs get here

    return groups._get_sequence_data_parallel_group()


def check_layout(layout: PartitionLayout) -> None:
    """Raise ``RuntimeError`` unless the ranks' fragments cover each parameter exactly once.

    A collective (every rank of the layout's group must call it): run once per layout, it turns
    a mapping this module misreads into an error instead of silently wrong trust ratios.
    """
    covered = torch.zeros(layout.count, dtype=torch.float64)
    for i, (_, numel) in zip(layout.index, layout.bounds, strict=True):
        covered[i] += numel
    dist.all_reduce_sum_(covered, layout.group)
    expected = torch.tensor(layout.numels, dtype=torch.float64)
    if not torch.equal(covered, expected):
        raise RuntimeError(
            "LARS: the ZeRO partitions do not cover each parameter exactly once "
            f"(elements per parameter {covered.tolist()}, expected {expected.tolist()}); "
            "per-layer trust ratios cannot be computed"
        )


def on_every_rank(flag: bool, layout: PartitionLayout) -> bool:
    """True on every rank of the layout's group when ``flag`` is True on all of them (a
    collective)."""
    return not dist.any_rank(not flag, layout.group)


def partition_norms(layout: PartitionLayout, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Full-parameter weight and gradient norms (float64, length ``count``) on every rank.

    One all-reduce of a ``[2, count]`` vector over the layout's group.
    """
    flat = layout.flat
    views = [flat.narrow(0, s, n) for s, n in layout.bounds]
    views += [grad.narrow(0, s, n) for s, n in layout.bounds]
    sums = torch.zeros(2, layout.count, dtype=torch.float64, device=flat.device)
    if views:
        norms = torch.stack(torch._foreach_norm(views)).to(torch.float64).square_()
        k = len(layout.bounds)
        sums[0].index_add_(0, layout.indices(), norms[:k])
        sums[1].index_add_(0, layout.indices(), norms[k:])
    dist.all_reduce_sum_(sums, layout.group)
    sums.sqrt_()
    return sums[0], sums[1]


def step_fragments(
    layout: PartitionLayout,
    grad: Tensor,
    buf: Tensor | None,
    ratios: Tensor,
    group: dict[str, Any],
) -> None:
    """Update each local fragment of ``layout.flat`` with its parameter's trust ratio.

    ``ratios`` holds one ratio per parameter of the group. Per fragment:
    ``d = ratio * (g + wd * p)``, then momentum SGD without dampening (``buf`` None when the
    momentum is 0; a zero buffer makes the first step ``b = d``). Elements outside every
    fragment (DeepSpeed's alignment padding) are left alone.
    """
    flat = layout.flat
    per_fragment = ratios[layout.indices()].to(flat.dtype)
    if flat.device.type == "cpu":
        _step_fragments_cpu(layout, grad, buf, per_fragment.tolist(), group)
        return
    # accelerators: multi-tensor ops on the fragment views, ratios kept on the device
    wd = group["weight_decay"]
    params = [flat.narrow(0, s, n) for s, n in layout.bounds]
    grads = [grad.narrow(0, s, n) for s, n in layout.bounds]
    steps = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
    torch._foreach_mul_(steps, list(per_fragment.unbind()))
    bufs = [buf.narrow(0, s, n) for s, n in layout.bounds] if buf is not None else []
    momentum_sgd(params, steps, bufs, group, 0.0, fused=flat.device.type in _FUSED_DEVICES)


def cpu_chunks(bounds: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
    """The CPU update's work list, each piece ``(fragment, start, numel)``: a fragment of at least
    ``_CPU_LARGE_NUMEL`` elements is cut into slices of at most ``_CPU_SLICE_NUMEL``, one chunk
    each (its memory traffic outweighs the per-call overhead); smaller fragments are gathered
    into chunks of at most ``_CPU_SLICE_NUMEL`` elements, one batch of multi-tensor calls each
    (the thresholds of the stage-0 CPU path, ``lars_update``)."""
    chunks: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    size = 0
    for i, (start, numel) in enumerate(bounds):
        if numel >= _CPU_LARGE_NUMEL:
            for s in range(start, start + numel, _CPU_SLICE_NUMEL):
                chunks.append([(i, s, min(_CPU_SLICE_NUMEL, start + numel - s))])
            continue
        if current and size + numel > _CPU_SLICE_NUMEL:
            chunks.append(current)
            current, size = [], 0
        current.append((i, start, numel))
        size += numel
    if current:
        chunks.append(current)
    return chunks


def _step_fragments_cpu(
    layout: PartitionLayout,
    grad: Tensor,
    buf: Tensor | None,
    ratios: list[float],
    group: dict[str, Any],
) -> None:
    """CPU: a chunk of small fragments takes a handful of multi-tensor calls instead of several
    calls per fragment (a ResNet-20 partition is 18-22 small fragments, where per-call overhead
    dominates); a slice of a large fragment is updated as the stage-0 path updates a slice of a
    large tensor (``lars_update.lars_slice_cpu``, the fewest memory passes)."""
    wd = group["weight_decay"]
    flat = layout.flat
    if layout.chunks is None:
        layout.chunks = cpu_chunks(layout.bounds)
    scratch = None
    for chunk in layout.chunks:
        if len(chunk) == 1:
            i, s, n = chunk[0]
            if scratch is None:
                scratch = torch.empty(min(_CPU_SLICE_NUMEL, flat.numel()), dtype=flat.dtype)
            b = buf.narrow(0, s, n) if buf is not None else None
            lars_slice_cpu(flat.narrow(0, s, n), grad.narrow(0, s, n), b, ratios[i], scratch, group)
            continue
        params = [flat.narrow(0, s, n) for _, s, n in chunk]
        grads = [grad.narrow(0, s, n) for _, s, n in chunk]
        scales = [ratios[i] for i, _, _ in chunk]
        steps = torch._foreach_mul(grads, scales)
        if wd != 0:
            torch._foreach_add_(steps, torch._foreach_mul(params, [wd * r for r in scales]))
        bufs = [buf.narrow(0, s, n) for _, s, n in chunk] if buf is not None else []
        momentum_sgd(params, steps, bufs, group, 0.0, fused=True)
