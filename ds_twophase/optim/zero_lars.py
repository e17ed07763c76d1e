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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .. import dist
from .lars_kernel import _KERNEL_DTYPES
from .lars_update import (
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
    "step_partition",
    "trust_ratios_from_norms",
]


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
    #: ``(local adapted, excluded, shared adapted)`` fragment positions (built on first use)
    parts: tuple[list[int], list[int], list[int]] | None = None

    def split(self) -> tuple[list[int], list[int], list[int]]:
        """Positions in ``index`` of the fragments of adapted parameters wholly on this rank,
        of excluded parameters, and of adapted parameters that other ranks share."""
        if self.parts is None:
            if self.shared is None:
                raise RuntimeError("LARS: check_layout must run before the partition is stepped")
            shared = set(self.shared)
            local, excluded, cut = [], [], []
            for k, i in enumerate(self.index):
                if self.excluded and self.excluded[i]:
                    excluded.append(k)
                elif i in shared:
                    cut.append(k)
                else:
                    local.append(k)
            self.parts = (local, excluded, cut)
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
    finish = _start_shared_norms(layout, grad, cut, group) if layout.shared else None
    flat = layout.flat
    views = _Views(layout, grad, buf)
    if kernel is not None and flat.device.type == "cpu" and flat.dtype in _KERNEL_DTYPES:
        for positions, adapt in ((local, True), (excluded, False)):
            if positions:
                options = group if adapt else {**group, "weight_decay": 0.0}
                skipped = kernel.lars_step(
                    views.params(positions),
                    views.grads(positions),
                    views.bufs(positions),
                    float(group["lr"]),
                    group["momentum"],
                    options["weight_decay"],
                    group["trust_coefficient"],
                    group["eps"],
                    group["nesterov"],
                    group["clip"],
                    adapt,
                )
                if skipped:  # never: views of one contiguous partition
                    raise RuntimeError("LARS: the fused kernel refused a ZeRO partition")
    else:
        if local:
            params, grads = views.params(local), views.grads(local)
            norms = torch.stack(torch._foreach_norm(params + grads)).to(torch.float64)
            ratios = trust_ratios_from_norms(norms[: len(local)], norms[len(local) :], group)
            _update(views, local, ratios, group, group["weight_decay"])
        if excluded:
            params, grads = views.params(excluded), views.grads(excluded)
            fused = flat.device.type in _FUSED_DEVICES
            momentum_sgd(params, grads, views.bufs(excluded), group, 0.0, fused)
    if finish is not None:
        ratios = finish()
        if cut:
            _update(views, cut, ratios, group, group["weight_decay"])


def _start_shared_norms(
    layout: PartitionLayout, grad: Tensor, cut: list[int], group: dict[str, Any]
) -> Callable[[], Tensor]:
    """Start the all-reduce of the squared norms of the shared parameters' fragments; the
    returned function waits for it and gives the trust ratio of each fragment in ``cut``."""
    assert layout.shared is not None  # split() checked it
    flat = layout.flat
    sums = torch.zeros(2, len(layout.shared), dtype=torch.float64, device=flat.device)
    slot = {i: s for s, i in enumerate(layout.shared)}
    slots = torch.tensor([slot[layout.index[k]] for k in cut], device=flat.device)
    if cut:
        views = [flat.narrow(0, *layout.bounds[k]) for k in cut]
        views += [grad.narrow(0, *layout.bounds[k]) for k in cut]
        norms = torch.stack(torch._foreach_norm(views)).to(torch.float64).square_()
        sums[0].index_add_(0, slots, norms[: len(cut)])
        sums[1].index_add_(0, slots, norms[len(cut) :])
    wait = dist.all_reduce_sum_start(sums, layout.group)

    def finish() -> Tensor:
        total = wait().sqrt_()
        return trust_ratios_from_norms(total[0], total[1], group)[slots]

    return finish


class _Views:
    """Fragment views of the partition, its gradient and its momentum buffer."""

    def __init__(self, layout: PartitionLayout, grad: Tensor, buf: Tensor | None):
        self.layout, self.grad, self.buf = layout, grad, buf

    def params(self, positions: list[int]) -> list[Tensor]:
        return [self.layout.flat.narrow(0, *self.layout.bounds[k]) for k in positions]

    def grads(self, positions: list[int]) -> list[Tensor]:
        return [self.grad.narrow(0, *self.layout.bounds[k]) for k in positions]

    def bufs(self, positions: list[int]) -> list[Tensor]:
        if self.buf is None:
            return []
        return [self.buf.narrow(0, *self.layout.bounds[k]) for k in positions]


def _update(
    views: _Views, positions: list[int], ratios: Tensor, group: dict[str, Any], wd: float
) -> None:
    """``d = ratio * (g + wd * p)`` and momentum SGD for the fragments at ``positions``, one
    ratio each. On CPU slice by slice (``lars_update.lars_slice_cpu``: ``d`` stays in cache);
    elsewhere multi-tensor ops with the ratios kept on the device."""
    flat = views.layout.flat
    params, grads, bufs = views.params(positions), views.grads(positions), views.bufs(positions)
    ratios = ratios.to(flat.dtype)
    if flat.device.type == "cpu":
        scratch = torch.empty(min(_CPU_SLICE_NUMEL, flat.numel()), dtype=flat.dtype)
        options = {**group, "weight_decay": wd}
        for k, ratio in enumerate(ratios.tolist()):
            p, g = params[k], grads[k]
            for s in range(0, p.numel(), _CPU_SLICE_NUMEL):
                n = min(_CPU_SLICE_NUMEL, p.numel() - s)
                b = bufs[k].narrow(0, s, n) if bufs else None
                lars_slice_cpu(p.narrow(0, s, n), g.narrow(0, s, n), b, ratio, scratch, options)
        return
    steps = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
    torch._foreach_mul_(steps, list(ratios.unbind()))
    momentum_sgd(params, steps, bufs, group, 0.0, fused=flat.device.type in _FUSED_DEVICES)
