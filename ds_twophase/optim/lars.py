"""LARS / LARC (You et al. 2017, "Large batch training of convolutional networks").

For each adapted parameter ``p`` with gradient ``g`` (weight decay ``wd``, trust coefficient
``eta``, momentum ``m``, learning rate ``lr``)::

    d = g + wd * p
    ratio = eta * ||p|| / (||g|| + wd * ||p|| + eps)      # 1 where ||p|| == 0 or ||g|| == 0
    ratio = min(ratio / lr, 1)                            # only with clip=True (LARC)
    b = m * b + ratio * d                                 # first step: b = ratio * d
    p -= lr * (ratio * d + m * b if nesterov else b)

This matches ``timm.optim.Lars`` (zero dampening, ``always_adapt=True``) numerically. A parameter
group with ``adapt=False`` skips the trust ratio and is plain momentum SGD with its own
``weight_decay`` (``lars_param_groups`` puts biases and normalisation parameters there).

Speed: the step never synchronises with the host (no ``.item()``, ratios stay on the device) and
works on whole lists of tensors. On accelerators everything is one pass of multi-tensor
(``torch._foreach_*``) kernels plus PyTorch's fused SGD kernel. On CPU the foreach kernels are a
C++ loop over tensors, and running every op over the whole list evicts each tensor from the cache
before the next op reads it, so tensors are processed in cache-sized buckets: many small tensors
share one bucket (few dispatches), and large tensors go one at a time through two memory passes
(norms, then one fused update). ``bench/lars.py`` measures the choice; see ``docs/lars.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["LARS"]

# CPU tuning (bench/lars.py). A bucket's parameters plus gradients should stay in the last-level
# cache between the norm pass and the update pass.
_CPU_BUCKET_BYTES = 4 << 20
# From this size on a tensor is updated by its own fused kernel call: the per-call overhead is
# then small against its memory traffic, and the update is one memory pass (``d`` is never
# materialised).
_CPU_LARGE_NUMEL = 1 << 16

_FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _check_hyperparameters(
    *,
    lr: Any,
    momentum: Any,
    weight_decay: Any,
    trust_coefficient: Any,
    eps: Any,
    nesterov: Any,
    clip: Any,
    adapt: Any,
    where: str = "",
) -> None:
    """Raise ``ValueError`` naming the first out-of-range hyperparameter."""

    def real(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where}{name}: must be finite, got {value!r}")
        return float(value)

    def flag(name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{where}{name}: expected true or false, got {value!r}")

    if real("lr", lr) < 0:
        raise ValueError(f"{where}lr: must be >= 0, got {lr}")
    if not 0 <= real("momentum", momentum) < 1:
        raise ValueError(f"{where}momentum: must be in [0, 1), got {momentum}")
    if real("weight_decay", weight_decay) < 0:
        raise ValueError(f"{where}weight_decay: must be >= 0, got {weight_decay}")
    if real("trust_coefficient", trust_coefficient) <= 0:
        raise ValueError(f"{where}trust_coefficient: must be > 0, got {trust_coefficient}")
    if real("eps", eps) < 0:
        raise ValueError(f"{where}eps: must be >= 0, got {eps}")
    flag("nesterov", nesterov)
    flag("clip", clip)
    flag("adapt", adapt)
    if nesterov and momentum == 0:
        raise ValueError(f"{where}nesterov: Nesterov momentum needs momentum > 0")


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling (LARS, or LARC with ``clip=True``) with SGD momentum.

    Args:
        params: parameters, or parameter groups (dicts), e.g. from
            :func:`ds_twophase.optim.lars_param_groups`.
        lr: learning rate (the global rate; the trust ratio scales it per tensor).
        momentum: momentum factor in [0, 1) (no dampening).
        weight_decay: L2 penalty added to the gradient before the trust ratio is applied.
        trust_coefficient: ``eta``, the trust coefficient of the ratio (> 0).
        eps: added to the ratio's denominator (>= 0).
        nesterov: Nesterov momentum (needs momentum > 0).
        clip: LARC clipping, ``ratio = min(ratio / lr, 1)``: the per-tensor rate never exceeds
            ``lr``.

    Every option can be overridden per parameter group. Groups also accept ``adapt`` (default
    True): with ``adapt=False`` the group gets no trust ratio, i.e. plain momentum SGD with the
    group's ``weight_decay`` (usually 0, for biases and normalisation parameters).

    Momentum buffers live in ``state[p]["momentum_buffer"]``, so ``state_dict`` and
    ``load_state_dict`` are the standard ``torch.optim.Optimizer`` ones. Parameters whose
    ``grad`` is None are skipped.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
        clip: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
            clip=clip,
            adapt=True,
        )
        _check_hyperparameters(**defaults)
        self._plans: dict[int, tuple[tuple[int, ...], list[_Bucket]]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (see ``torch.optim.Optimizer``); its hyperparameters are validated."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        _check_hyperparameters(
            **{k: group[k] for k in self.defaults}, where=f"param_groups[{index}]."
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("adapt", True)
            group.setdefault("clip", False)
            group.setdefault("nesterov", False)
        self._plans = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._step_group(index, group)
        return loss

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        active = [p for p in group["params"] if p.grad is not None]
        if not active:
            return
        key = tuple(map(id, active))
        cached = self._plans.get(index)
        if cached is None or cached[0] != key:
            cached = (key, _plan(active))
            self._plans[index] = cached
        momentum = group["momentum"]
        for bucket in cached[1]:
            params = [active[i] for i in bucket.indices]
            grads = [p.grad for p in params]
            bufs = self._momentum_buffers(params) if momentum != 0 else []
            if not group["adapt"]:
                _sgd(params, grads, bufs, group, group["weight_decay"], bucket.fused)
            elif bucket.large:
                self._lars_large(params, grads, bufs, group)
            else:
                _lars_foreach(params, grads, bufs, group, bucket.fused)

    def _momentum_buffers(self, params: list[Tensor]) -> list[Tensor]:
        # A zero buffer makes the first step b = m * 0 + d = d exactly, as in torch SGD / timm.
        bufs = []
        for p in params:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
            bufs.append(buf)
        return bufs

    def _lars_large(
        self, params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]
    ) -> None:
        """CPU path for large tensors: ratios per bucket, then one fused pass per tensor."""
        ratio = _trust_ratios(params, grads, group)
        # The fused SGD kernel divides the gradient by ``grad_scale`` (a tensor) and adds
        # ``weight_decay * p`` (a float): with 1 / ratio and ratio * wd it computes exactly
        # d = ratio * (g + wd * p) in the same memory pass as the momentum and parameter
        # updates. Reading the ratios on the host is a plain memory read on CPU (no device to
        # wait for); this path is never taken for accelerator tensors.
        inv = torch.reciprocal(ratio).unbind()
        wd = group["weight_decay"]
        decay = (ratio * wd).tolist() if wd != 0 else [0.0] * len(params)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            torch._fused_sgd_(
                [p],
                [g],
                bufs[i : i + 1],
                weight_decay=decay[i],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
                is_first_step=False,
                grad_scale=inv[i],
            )


class _Bucket:
    """Indices (into a group's active parameters) updated together, and how."""

    __slots__ = ("indices", "large", "fused")

    def __init__(self, indices: list[int], large: bool, fused: bool):
        self.indices = indices
        self.large = large
        self.fused = fused


def _plan(params: list[Tensor]) -> list[_Bucket]:
    """Split a group's parameters into buckets of one device and dtype (see module docstring)."""
    by_kind: dict[tuple[torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        if p.grad.is_sparse:
            raise ValueError("LARS does not support sparse gradients")
        if p.is_complex():
            raise ValueError("LARS does not support complex parameters")
        by_kind.setdefault((p.device, p.dtype, p.grad.dtype), []).append(i)
    buckets = []
    for (device, dtype, grad_dtype), indices in by_kind.items():
        fused = device.type in _FUSED_DEVICES and dtype == grad_dtype and dtype.is_floating_point
        if device.type != "cpu":
            buckets.append(_Bucket(indices, large=False, fused=fused))
            continue
        small: list[int] = []
        size = 0
        for i in indices:
            numel = params[i].numel()
            if numel >= _CPU_LARGE_NUMEL and fused:
                buckets.append(_Bucket([i], large=True, fused=True))
                continue
            nbytes = 2 * numel * params[i].element_size()
            if small and size + nbytes > _CPU_BUCKET_BYTES:
                buckets.append(_Bucket(small, large=False, fused=fused))
                small, size = [], 0
            small.append(i)
            size += nbytes
        if small:
            buckets.append(_Bucket(small, large=False, fused=fused))
    return _merge_large(buckets, params)


def _merge_large(buckets: list[_Bucket], params: list[Tensor]) -> list[_Bucket]:
    """Group consecutive large tensors so their ratios are computed together (few tiny ops)."""
    out: list[_Bucket] = []
    size = 0
    for b in buckets:
        nbytes = 2 * sum(params[i].numel() * params[i].element_size() for i in b.indices)
        last = out[-1] if out else None
        if (
            b.large
            and last is not None
            and last.large
            and params[last.indices[0]].device == params[b.indices[0]].device
            and params[last.indices[0]].dtype == params[b.indices[0]].dtype
            and size + nbytes <= _CPU_BUCKET_BYTES * 4
        ):
            last.indices = last.indices + b.indices
            size += nbytes
        else:
            out.append(b)
            size = nbytes
    return out


def _trust_ratios(params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> Tensor:
    """Per-tensor trust ratios as one 1-D tensor (on the parameters' device; no host sync)."""
    norms = torch.stack(torch._foreach_norm(params + grads))
    w_norm, g_norm = norms[: len(params)], norms[len(params) :]
    # Same operation order as timm's _lars_trust_ratio, for bit-level agreement where possible.
    ratio = (
        group["trust_coefficient"]
        * w_norm
        / (g_norm + w_norm * group["weight_decay"] + group["eps"])
    )
    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
    if group["clip"]:
        lr = group["lr"]
        # min(ratio / lr, 1) tends to 1 as lr -> 0; dividing by 0 would give nan for ratio == 0
        ratio = ratio.div(lr).clamp_(max=1.0) if lr > 0 else torch.ones_like(ratio)
    return ratio


def _lars_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    group: dict[str, Any],
    fused: bool,
) -> None:
    """Multi-tensor path: d = ratio * (g + wd * p) for the list, then one SGD update."""
    ratio = _trust_ratios(params, grads, group).unbind()
    wd = group["weight_decay"]
    if wd != 0:
        d = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_mul_(d, ratio)
    else:
        d = torch._foreach_mul(grads, ratio)
    _sgd(params, d, bufs, group, 0.0, fused)


def _sgd(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    group: dict[str, Any],
    weight_decay: float,
    fused: bool,
) -> None:
    """SGD with momentum (no dampening) on lists; ``bufs`` empty when momentum is 0."""
    m, lr, nesterov = group["momentum"], group["lr"], group["nesterov"]
    if fused:
        torch._fused_sgd_(
            params,
            grads,
            bufs,
            weight_decay=weight_decay,
            momentum=m,
            lr=lr,
            dampening=0.0,
            nesterov=nesterov,
            maximize=False,
            is_first_step=False,
        )
        return
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if m != 0:
        torch._foreach_mul_(bufs, m)
        torch._foreach_add_(bufs, grads)
        grads = torch._foreach_add(grads, bufs, alpha=m) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)
