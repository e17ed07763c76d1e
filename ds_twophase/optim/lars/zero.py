"""LARS on DeepSpeed's flat ZeRO-1/2 partitions, with the per-layer trust ratios of the full model.

Under ZeRO stages 1 and 2 (and DeepSpeed's ``BF16_Optimizer``) every parameter group is
flattened into one fp32 tensor and each data-parallel rank keeps a slice of it: the optimizer's
group then holds one "parameter", the rank's partition, which starts and ends anywhere inside
the layers. DeepSpeed records where each model parameter lies in the partition
(``param._hp_mapping``, ``deepspeed/utils/tensor_fragment.py``): a fragment ``(start, numel)``,
or None when no part of the parameter is on this rank.

A parameter that lies wholly on this rank (all but at most two per rank, whatever the model)
gets its norms and trust ratio here, exactly as at stage 0 (the same fused CPU kernel). Only the
parameters cut by a partition boundary ("shared", found once when the layout is checked) need
the other ranks: each rank sums the squares of its fragments of them (weights, and gradients
after DeepSpeed's unscaling and clipping), and one all-reduce of a ``[2, shared]`` float64
vector over the data-parallel group gives their whole-parameter norms. That all-reduce runs
while the other fragments are updated, and none runs when nothing is shared (one rank).
Momentum buffers stay the size of the partition.

Under ZeRO the optimizer gets one group in which biases and normalisation parameters are marked
``excluded`` (no trust ratio, no weight decay) instead of a group of their own: DeepSpeed
flattens, clips and all-gathers each group separately, with collectives per group, which costs
more than LARS's whole step on a small model (``bench/lars_zero.py``). Excluded fragments need no
norms: their update is elementwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor

from ... import dist
from .kernel import KERNEL_DTYPES
from .update import (
    CPU_LARGE_NUMEL,
    FUSED_DEVICES,
    lars_foreach,
    lars_large_cpu,
    momentum_sgd,
    trust_ratios_from_norms,
)

__all__ = [
    "Fragments",
    "PartitionLayout",
    "check_layout",
    "checked_layout",
    "find_layout",
    "on_every_rank",
    "step_partition",
    "trust_ratios_from_norms",
]


@dataclass
class Fragments:
    """Some of a layout's fragments: their positions in the layout, and where they lie."""

    #: positions in ``PartitionLayout.index``
    positions: list[int]
    #: start of each in the flat partition
    starts: list[int]
    #: number of elements of each
    numels: list[int]


@dataclass
class PartitionLayout:
    """Where the parameters of one optimizer group lie in this rank's flat partition."""

    #: the flat fp32 partition (the single parameter DeepSpeed puts in the group)
    flat: Tensor
    #: number of parameters in the group, the same on every rank
    count: int
    #: for each local fragment, the index of its parameter in the group
    index: list[int]
    #: for each local fragment, ``(start, numel)`` in ``flat``
    bounds: list[tuple[int, int]]
    #: the data-parallel process group the partition is split over (None: the default group)
    group: Any
    #: number of elements of each parameter of the group
    numels: list[int]
    #: for each parameter of the group, whether it is excluded (no trust ratio, no weight decay)
    excluded: list[bool] = field(default_factory=list)
    #: adapted parameters held by more than one rank, in index order (set by ``check_layout``)
    shared: list[int] | None = None
    #: ``(local adapted, excluded, shared adapted)`` fragments (built on first use)
    parts: tuple[Fragments, Fragments, Fragments] | None = None
    #: for each shared adapted fragment, its parameter's position in ``shared`` (built with
    #: parts), as a list and as a tensor on ``flat``'s device
    slot_list: list[int] = field(default_factory=list)
    slots: Tensor | None = None

    def split(self) -> tuple[Fragments, Fragments, Fragments]:
        """The fragments of adapted parameters wholly on this rank, of excluded parameters,
        and of adapted parameters that other ranks share."""
        if self.parts is None:
            if self.shared is None:
                raise RuntimeError("LARS: check_layout must run before the partition is stepped")
            shared = {i: slot for slot, i in enumerate(self.shared)}
            lists: tuple[list[int], list[int], list[int]] = ([], [], [])
            for k, i in enumerate(self.index):
                if self.excluded and self.excluded[i]:
                    lists[1].append(k)
                elif i in shared:
                    lists[2].append(k)
                else:
                    lists[0].append(k)
            self.parts = cast(
                tuple[Fragments, Fragments, Fragments],
                tuple(
                    Fragments(ks, [self.bounds[k][0] for k in ks], [self.bounds[k][1] for k in ks])
                    for ks in lists
                ),
            )
            self.slot_list = [shared[self.index[k]] for k in lists[2]]
            self.slots = torch.tensor(self.slot_list, dtype=torch.long, device=self.flat.device)
        return self.parts


def find_layout(
    flat: Tensor,
    lp_groups: Sequence[Sequence[Tensor]],
    excluded: Sequence[Sequence[bool]] | None = None,
) -> PartitionLayout | None:
    """The layout of ``flat`` among the original (model) parameter groups ``lp_groups``.

    A parameter belongs to ``flat`` when DeepSpeed's fragment of it is a view of ``flat``'s
    storage. ``excluded`` marks, per group and parameter, those without trust ratio and weight
    decay. None when no parameter of any group maps into ``flat`` (not a ZeRO-1/2 partition,
    or a rank that holds none of the group's elements).
    """
    storage = flat.untyped_storage().data_ptr()
    for g, lp_group in enumerate(lp_groups):
        mask = list(excluded[g]) if excluded is not None else [False] * len(lp_group)
        trainable = [(p, x) for p, x in zip(lp_group, mask, strict=True) if p.requires_grad]
        index, bounds, owner = [], [], None
        for i, (p, _) in enumerate(trainable):
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
            return PartitionLayout(
                flat,
                len(trainable),
                index,
                bounds,
                _dp_group(flat, owner),
                [p.numel() for p, _ in trainable],
                [x for _, x in trainable],
            )
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
    """Raise ``RuntimeError`` unless the ranks' fragments cover each parameter exactly once,
    and record which adapted parameters more than one rank holds (``layout.shared``).

    A collective (every rank of the layout's group must call it): run once per layout, it turns
    a mapping this module misreads into an error instead of silently wrong trust ratios.
    """
    # row 0: elements of each parameter on this rank; row 1: whether this rank holds any
    counts = torch.zeros(2, layout.count, dtype=torch.float64)
    for i, (_, numel) in zip(layout.index, layout.bounds, strict=True):
        counts[0, i] += numel
        counts[1, i] += 1
    dist.all_reduce_sum_(counts, layout.group)
    expected = torch.tensor(layout.numels, dtype=torch.float64)
    if not torch.equal(counts[0], expected):
        raise RuntimeError(
            "LARS: the ZeRO partitions do not cover each parameter exactly once "
            f"(elements per parameter {counts[0].tolist()}, expected {expected.tolist()}); "
            "per-layer trust ratios cannot be computed"
        )
    excluded = layout.excluded or [False] * layout.count
    layout.shared = [
        i for i, holders in enumerate(counts[1].tolist()) if holders > 1 and not excluded[i]
    ]
    layout.parts = None


def checked_layout(
    flat: Tensor,
    lp_groups: Sequence[Sequence[Tensor]],
    excluded: Sequence[Sequence[bool]] | None = None,
) -> PartitionLayout | None:
    """``find_layout``, then ``check_layout`` (a collective); None when ``flat`` is no ZeRO-1/2
    partition (e.g. a whole-parameter fp32 copy). Raises ``RuntimeError`` when DeepSpeed
    partitioned the parameters in a way with no per-parameter mapping (ZeRO-3)."""
    layout = find_layout(flat, lp_groups, excluded)
    if layout is None:
        lp = [p for g in lp_groups for p in g]
        if any(getattr(p, "_hp_mapping", None) is not None or hasattr(p, "ds_id") for p in lp):
            raise RuntimeError(
                "LARS: DeepSpeed partitioned the parameters, but this rank's partition of a "
                "parameter group maps to none of them (ZeRO stage 3, or a group smaller "
                "than the number of ranks); per-layer trust ratios cannot be computed. "
                "LARS works with zero_optimization.stage 0, 1 and 2"
            )
        return None
    check_layout(layout)
    return layout


def on_every_rank(flag: bool, layout: PartitionLayout) -> bool:
    """True on every rank of the layout's group when ``flag`` is True on all of them (a
    collective)."""
    return not dist.any_rank(not flag, layout.group)


def step_partition(
    layout: PartitionLayout,
    grad: Tensor,
    buf: Tensor | None,
    group: dict[str, Any],
    kernel: ModuleType | None = None,
) -> None:
    """One LARS step of this rank's partition ``layout.flat`` (gradient ``grad``, momentum
    buffer ``buf`` or None when the momentum is 0) with the group's hyperparameters.

    Per fragment: ``d = ratio * (g + wd * p)`` with its parameter's trust ratio (1, and no
    weight decay, for excluded parameters), then momentum SGD without dampening (a zero buffer
    makes the first step ``b = d``). ``kernel``: LARS's fused CPU kernel, for CPU partitions of
    the dtypes it takes (else the PyTorch implementation). Elements outside every fragment
    (DeepSpeed's alignment padding) are left alone. A collective when parameters are shared.
    """
    local, excluded, cut = layout.split()
    flat = layout.flat
    if kernel is not None and (flat.device.type != "cpu" or flat.dtype not in KERNEL_DTYPES):
        kernel = None
    if kernel is None:
        _step_partition_pytorch(layout, grad, buf, group)
        return
    lr, m = float(group["lr"]), group["momentum"]
    args = (group["trust_coefficient"], group["eps"], group["nesterov"], group["clip"])
    wait = None
    if layout.shared:
        # squared norms of the shared parameters' fragments here, summed over the ranks while
        # the other fragments are updated
        sums = [0.0] * (2 * len(layout.shared))
        mine = kernel.fragment_sum_squares(flat, grad, cut.starts, cut.numels)
        for k, slot in enumerate(layout.slot_list):
            sums[2 * slot] += mine[2 * k]
            sums[2 * slot + 1] += mine[2 * k + 1]
        wait = dist.all_reduce_sum_start(torch.tensor(sums, dtype=torch.float64), layout.group)
    for part, adapt in ((local, True), (excluded, False)):
        if part.positions:
            wd = group["weight_decay"] if adapt else 0.0
            kernel.lars_step_fragments(
                flat, grad, buf, part.starts, part.numels, [], lr, m, wd, *args, adapt
            )
    if wait is not None:
        total = wait().tolist()
        if cut.positions:
            mine = [x for slot in layout.slot_list for x in total[2 * slot : 2 * slot + 2]]
            wd = group["weight_decay"]
            kernel.lars_step_fragments(
                flat, grad, buf, cut.starts, cut.numels, mine, lr, m, wd, *args, True
            )


def _step_partition_pytorch(
    layout: PartitionLayout, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
) -> None:
    """``step_partition`` without the fused kernel: multi-tensor ops (accelerators, or a CPU
    where the kernel cannot be built)."""
    local, excluded, cut = layout.split()
    flat = layout.flat
    views = _Views(layout, grad, buf)
    wait = None
    if layout.shared:
        assert layout.slots is not None  # split() built it
        sums = torch.zeros(2, len(layout.shared), dtype=torch.float64, device=flat.device)
        if cut.positions:
            cut_norms = torch._foreach_norm(views.params(cut) + views.grads(cut))
            squares = torch.stack(cut_norms).to(torch.float64).square_()
            sums.index_add_(1, layout.slots, squares.view(2, -1))
        wait = dist.all_reduce_sum_start(sums, layout.group)
    if local.positions:
        norms = torch.stack(torch._foreach_norm(views.params(local) + views.grads(local)))
        n = len(local.positions)
        w_norm, g_norm = norms[:n].to(torch.float64), norms[n:].to(torch.float64)
        _update(views, local, trust_ratios_from_norms(w_norm, g_norm, group), group)
    if excluded.positions:
        fused = flat.device.type in FUSED_DEVICES
        params, grads = views.params(excluded), views.grads(excluded)
        momentum_sgd(params, grads, views.bufs(excluded), group, 0.0, fused)
    if wait is not None:
        total = wait().sqrt_()
        if cut.positions:
            ratios = trust_ratios_from_norms(total[0], total[1], group)[layout.slots]
            _update(views, cut, ratios, group)


class _Views:
    """Fragment views of the partition, its gradient and its momentum buffer (the PyTorch
    implementation's inputs)."""

    def __init__(self, layout: PartitionLayout, grad: Tensor, buf: Tensor | None):
        self.flat, self.grad, self.buf = layout.flat, grad, buf

    @staticmethod
    def _of(t: Tensor, part: Fragments) -> list[Tensor]:
        return [t.narrow(0, s, n) for s, n in zip(part.starts, part.numels, strict=True)]

    def params(self, part: Fragments) -> list[Tensor]:
        return self._of(self.flat, part)

    def grads(self, part: Fragments) -> list[Tensor]:
        return self._of(self.grad, part)

    def bufs(self, part: Fragments) -> list[Tensor]:
        return self._of(self.buf, part) if self.buf is not None else []


def _update(views: _Views, part: Fragments, ratios: Tensor, group: dict[str, Any]) -> None:
    """``d = ratio * (g + wd * p)`` and momentum SGD for the fragments of ``part``, one ratio
    each, by the stage-0 PyTorch implementation's two routes (``update.py``): on CPU a large
    fragment goes slice by slice (``d`` stays in cache), the rest is multi-tensor ops with the
    ratios kept on the device."""
    flat = views.flat
    params, grads, bufs = views.params(part), views.grads(part), views.bufs(part)
    ratios = ratios.to(flat.dtype)

    def take(ks: list[int]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return (
            [params[k] for k in ks],
            [grads[k] for k in ks],
            [bufs[k] for k in ks] if bufs else [],
        )

    small = list(range(len(params)))
    if flat.device.type == "cpu":
        small = [k for k in small if params[k].numel() < CPU_LARGE_NUMEL]
        large = [k for k in range(len(params)) if k not in small]
        if large:
            lars_large_cpu(*take(large), group, ratios[large])
    if small:
        lars_foreach(*take(small), group, flat.device.type in FUSED_DEVICES, ratios[small])
