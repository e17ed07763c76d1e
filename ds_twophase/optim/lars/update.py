"""The PyTorch implementation of the LARS update (accelerators, and the CPU fallback of the
fused kernel); the design is described in ``optimizer.py`` and ``docs/lars.md``.

Parameters are split into buckets (``plan_buckets``); each bucket is updated on lists of tensors and
ends in PyTorch's fused SGD kernel: one multi-tensor pass per group on accelerators,
cache-sized buckets and slices on CPU, or a ``torch.compile``-d loop with ``compile=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from .kernel import KERNEL_DTYPES, kernel_module

# CPU tuning, measured with bench/lars.py. Weights + grads of one bucket stay in the last-level
# cache between the norm pass and the update pass.
_CPU_BUCKET_BYTES = 4 << 20
# Tensors this large take the per-tensor CPU path: its per-call overhead is small against
# their memory traffic.
CPU_LARGE_NUMEL = 1 << 16
# Slice length of that path: ``d`` of one slice (2 MiB in fp32) is still in cache when the fused
# kernel reads it back.
_CPU_SLICE_NUMEL = 1 << 19

FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")


def lars_large_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    group: dict[str, Any],
    ratios: Tensor | None = None,
) -> None:
    """Large contiguous CPU tensors: d = ratio * g per slice, then fused SGD on that slice.
    ``ratios``: one trust ratio per tensor computed elsewhere (ZeRO fragments, whose ratios are
    their whole parameters'); by default each tensor's own.

    The kernel adds ``weight_decay * p`` with a float weight decay, so ``ratio * wd`` is
    passed as that float: d = ratio * g + ratio * wd * p in the same memory pass as the
    momentum and parameter updates. The ratios are read on the host for that; for CPU
    tensors this is a memory read with no device to wait for (accelerators never get here).
    """
    if ratios is None:
        ratios = _trust_ratios(params, grads, group)
    m, n = group["momentum"], _CPU_SLICE_NUMEL
    scratch = torch.empty(min(n, max(p.numel() for p in params)), dtype=params[0].dtype)
    for i, (p, g, ratio) in enumerate(zip(params, grads, ratios.tolist(), strict=True)):
        flat_p, flat_g = p.view(-1), g.view(-1)
        flat_b = bufs[i].view(-1) if m != 0 else None
        for start in range(0, flat_p.numel(), n):
            stop = min(start + n, flat_p.numel())
            b = flat_b[start:stop] if flat_b is not None else None
            lars_slice_cpu(flat_p[start:stop], flat_g[start:stop], b, ratio, scratch, group)


def lars_slice_cpu(
    param: Tensor, grad: Tensor, buf: Tensor | None, ratio: float, scratch: Tensor, group: dict
) -> None:
    """One contiguous CPU slice (at most ``scratch``'s length): ``d = ratio * g`` into
    ``scratch``, where it is still in cache when the fused SGD kernel reads it back and adds
    ``ratio * wd * p`` in the same pass as the momentum and parameter updates."""
    d = torch.mul(grad, ratio, out=scratch[: grad.numel()])
    bufs = [buf] if buf is not None else []
    momentum_sgd([param], [d], bufs, group, group["weight_decay"] * ratio, fused=True)


def lars_compiled(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]
) -> None:
    """Update through the compiled loop (``LARS(compile=True)``); raises if it cannot compile."""
    _compiled_lars()(
        params,
        grads,
        bufs,
        # a tensor, so that the scheduler's new lr each step does not recompile
        torch.tensor(group["lr"], dtype=torch.float64),
        momentum=group["momentum"],
        weight_decay=group["weight_decay"],
        trust_coefficient=group["trust_coefficient"],
        eps=group["eps"],
        nesterov=group["nesterov"],
        clip=group["clip"],
    )


_COMPILED: Callable[..., None] | None = None


def _compiled_lars() -> Callable[..., None]:
    global _COMPILED
    if _COMPILED is None:
        # dynamic=False: every tensor gets a kernel specialised to its size, and a new size
        # recompiles rather than switching the whole graph to slower generic kernels.
        # size_asserts: the guards already check every input's size and strides; repeating it
        # in the generated code costs a quarter of a ResNet-20 step.
        _COMPILED = torch.compile(
            _lars_loop, fullgraph=True, dynamic=False, options={"size_asserts": False}
        )
    return _COMPILED


def _lars_loop(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    lr: Tensor,
    *,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    clip: bool,
) -> None:
    """The update written tensor by tensor, for ``torch.compile`` to fuse per tensor."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        w_norm = torch.linalg.vector_norm(p)
        g_norm = torch.linalg.vector_norm(g)
        ratio = trust_coefficient * w_norm / (g_norm + w_norm * weight_decay + eps)
        ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
        if clip:
            ratio = torch.where(lr > 0, torch.clamp(ratio / lr, max=1.0), 1.0)
        d = (g + p * weight_decay) * ratio
        if momentum != 0:
            b = bufs[i]
            b.mul_(momentum).add_(d)
            d = d + b * momentum if nesterov else b
        p.sub_(d * lr)


class Bucket:
    """Indices (into a group's parameters that have grads) updated together, and how."""

    __slots__ = ("indices", "large", "fused", "compiled", "kernel")

    def __init__(
        self,
        indices: list[int],
        large: bool,
        fused: bool,
        compiled: bool = False,
        kernel: bool = False,
    ):
        self.indices = indices
        self.large = large
        self.fused = fused
        self.compiled = compiled
        self.kernel = kernel


def plan_buckets(params: list[Tensor], compile: bool = False, kernel: bool = False) -> list[Bucket]:
    """Split parameters into buckets of one device and dtype (see the module docstring).

    With ``kernel`` (and the fused CPU kernel available) the float32/float64 CPU tensors of a
    kind form one bucket for it: the kernel keeps each tensor in cache between its two passes
    by itself. Otherwise, with ``compile``, the small CPU tensors of a kind share one bucket:
    one compiled graph.
    """
    by_kind: dict[tuple[torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        grad = cast(Tensor, p.grad)  # the caller passes only parameters that have a grad
        if grad.is_sparse:
            raise ValueError("LARS does not support sparse gradients")
        if p.is_complex():
            raise ValueError("LARS does not support complex parameters")
        by_kind.setdefault((p.device, p.dtype, grad.dtype), []).append(i)
    buckets = []
    for (device, dtype, grad_dtype), indices in by_kind.items():
        fused = device.type in FUSED_DEVICES and dtype == grad_dtype and dtype.is_floating_point
        if device.type != "cpu":
            buckets.append(Bucket(indices, large=False, fused=fused))
            continue
        # the kernel is built (or found unavailable) here, at the first step that needs it
        if (
            kernel
            and dtype == grad_dtype
            and dtype in KERNEL_DTYPES
            and kernel_module() is not None
        ):
            buckets.append(Bucket(indices, large=False, fused=fused, kernel=True))
            continue
        # (members, bytes) of the open small and large bucket
        open_buckets: dict[bool, tuple[list[int], int]] = {False: ([], 0), True: ([], 0)}
        for i in indices:
            large = params[i].numel() >= CPU_LARGE_NUMEL
            nbytes = 2 * params[i].numel() * params[i].element_size()
            members, size = open_buckets[large]
            if members and size + nbytes > _CPU_BUCKET_BYTES and (large or not compile):
                buckets.append(Bucket(members, large, fused, compile and not large))
                members, size = [], 0
            open_buckets[large] = (members + [i], size + nbytes)
        for large, (members, _) in open_buckets.items():
            if members:
                buckets.append(Bucket(members, large, fused, compile and not large))
    return buckets


def same_strides(params: list[Tensor], *others: list[Tensor]) -> bool:
    """True when every tensor in ``others`` (lists parallel to params, or empty) has its
    parameter's strides."""
    strides = [p.stride() for p in params]
    return all(not xs or [x.stride() for x in xs] == strides for xs in others)


def _trust_ratios(params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> Tensor:
    """Per-tensor trust ratios as one 1-D tensor on the parameters' device (no host sync)."""
    norms = torch.stack(torch._foreach_norm(params + grads))
    return trust_ratios_from_norms(norms[: len(params)], norms[len(params) :], group)


def trust_ratios_from_norms(w_norm: Tensor, g_norm: Tensor, group: dict[str, Any]) -> Tensor:
    """LARS trust ratios from weight and gradient norms (1-D tensors, one entry per tensor or
    per whole parameter under ZeRO, ``zero.py``)."""
    # timm's order of operations, so that float rounding agrees as far as possible
    ratio = (
        group["trust_coefficient"]
        * w_norm
        / (g_norm + w_norm * group["weight_decay"] + group["eps"])
    )
    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
    if group["clip"]:
        lr = group["lr"]
        # min(ratio / lr, 1) tends to 1 as lr -> 0, where 0 / 0 would give nan
        ratio = ratio.div(lr).clamp_(max=1.0) if lr > 0 else torch.ones_like(ratio)
    return ratio


def lars_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    group: dict[str, Any],
    fused: bool,
    ratios: Tensor | None = None,
) -> None:
    """Multi-tensor path: d = ratio * (g + wd * p) for the whole list, then one SGD update.
    ``ratios``: one trust ratio per tensor computed elsewhere; by default each tensor's own."""
    if ratios is None:
        ratios = _trust_ratios(params, grads, group)
    ratio = ratios.unbind()
    wd = group["weight_decay"]
    if wd != 0:
        d = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_mul_(d, ratio)
    else:
        d = torch._foreach_mul(grads, ratio)
    momentum_sgd(params, d, bufs, group, 0.0, fused)


def momentum_sgd(
    params: list[Tensor],
    grads: list[Tensor] | tuple[Tensor, ...],
    bufs: list[Tensor],
    group: dict[str, Any],
    weight_decay: float,
    fused: bool,
) -> None:
    """SGD with momentum, no dampening, on lists; ``bufs`` is empty when momentum is 0.

    ``fused``: PyTorch's fused kernel (one memory pass; needs a device in ``FUSED_DEVICES``).
    """
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
