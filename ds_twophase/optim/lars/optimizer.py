"""LARS / LARC (You et al. 2017, "Large batch training of convolutional networks").

For each adapted parameter ``p`` with gradient ``g`` (weight decay ``wd``, trust coefficient
``eta``, momentum ``m``, learning rate ``lr``)::

    d = g + wd * p
    ratio = eta * ||p|| / (||g|| + wd * ||p|| + eps)      # 1 where ||p|| == 0 or ||g|| == 0
    ratio = min(ratio / lr, 1)                            # only with clip=True (LARC)
    d = ratio * d
    b = m * b + d                                         # first step: b = d
    p -= lr * (d + m * b if nesterov else b)

This matches ``timm.optim.Lars`` (zero dampening, ``always_adapt=True``) numerically. A parameter
group with ``adapt=False`` skips the trust ratio and is plain momentum SGD with its own
``weight_decay`` (``lars_param_groups`` puts biases and normalisation parameters there).
``p.grad`` is never modified.

Speed (measured by ``bench/lars.py``, see ``docs/lars.md``): on CPU, float32 and float64
tensors go through a small C++ kernel (``kernel.cpp``) that does the whole update of a
parameter group in one call, tensor by tensor: both norms in one pass, then ``d``, the buffer
and ``p`` in a second pass while the tensor is still in cache. It is compiled at the first step
that needs it (10-15 s with g++, once: cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``; concurrent processes share one build through torch's file lock).
``DS_TWOPHASE_LARS_KERNEL=0`` disables it; if it cannot be built the optimizer warns once and
uses the PyTorch implementation below. Tensors the kernel does not take (other dtypes,
non-dense views, or a gradient or buffer whose strides differ from the parameter's) take that
implementation too.

The PyTorch implementation works on lists of tensors and ends in PyTorch's fused SGD kernel
(momentum and parameter update in one memory pass). On accelerators each group is one
multi-tensor (``torch._foreach_*``) pass whose trust ratios stay on the device: no host
synchronisation. On CPU the foreach kernels are plain C++ loops and an op over the whole list
evicts each tensor from the cache before the next op reads it, so tensors go in cache-sized
buckets: small tensors share a bucket (few dispatches), and large tensors are updated slice by
slice so that ``d`` is never written out to memory.

The kernel's loader is ``kernel.py``; the PyTorch implementation is
``update.py``.

Under DeepSpeed ZeRO-1/2 a group arrives as one flat partition of this rank; the trust ratios
are then those of whole parameters, with the norms of parameters cut by a partition boundary
summed over the ranks (``zero.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ...errors import ConfigError
from . import zero
from .hyperparameters import check_hyperparameters
from .kernel import kernel_module
from .update import (
    Bucket,
    lars_compiled,
    lars_foreach,
    lars_large_cpu,
    momentum_sgd,
    plan_buckets,
    same_strides,
)

__all__ = ["LARS"]


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
        compile: only where the fused CPU kernel (see the module docstring) is disabled or
            unavailable, or for CPU dtypes it does not take: run the update of small CPU tensors
            (below 65536 elements) through ``torch.compile``, which fuses each tensor's norms
            and update into one C++ loop: about 2x faster than eager on many small tensors
            (ResNet-20), but the first step compiles for 10-60 s (cached on disk for later
            runs; a change of shapes or of a hyperparameter other than ``lr`` compiles again).
            Needs a C++ compiler; if compilation fails the optimizer warns once and uses the
            eager implementation. Large tensors and accelerator tensors always use the eager
            implementation, which is already fused.

    Every option can be overridden per parameter group. Groups also accept ``adapt`` (default
    True): with ``adapt=False`` the group gets no trust ratio, i.e. plain momentum SGD with the
    group's ``weight_decay`` (usually 0, for biases and normalisation parameters); and
    ``excluded``, one bool per parameter: the marked parameters get neither trust ratio nor
    weight decay (``split_param_groups(mark_only=True)``; what the JSON path builds under
    ZeRO-1/2, where every extra group costs DeepSpeed collectives).

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
        *,
        compile: bool = False,
    ):
        defaults: dict[str, Any] = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
            clip=clip,
            adapt=True,
        )
        check_hyperparameters(**defaults, compile=compile)
        self._compile = compile
        self._kernel = True  # off with disable_kernel()
        self._plans: dict[tuple[int, int], tuple[list[Tensor], list[Bucket]]] = {}
        # the parameters of each group as given (model parameters); under ZeRO-1/2 DeepSpeed
        # replaces a group's params by one flat partition, mapped back to these (zero.py)
        self._lp_groups: list[list[Tensor]] = []
        # per group and parameter: excluded (no trust ratio, no weight decay); see "excluded"
        self._lp_excluded: list[list[bool]] = []
        self._lp_ids: set[int] = set()
        self._layouts: dict[int, zero.PartitionLayout] = {}
        # False until the first step that changed something (see _is_setup_step)
        self._started = False
        super().__init__(params, defaults)

    @property
    def compiled(self) -> bool:
        """Whether ``compile=True`` is in effect (False again after a failed compilation)."""
        return self._compile

    def disable_kernel(self) -> LARS:
        """Keep this optimizer off the fused CPU kernel (the PyTorch implementation it otherwise
        falls back to; for comparisons). Call before the first ``step``. Returns ``self``."""
        self._kernel = False
        self._plans.clear()
        return self

    @property
    def uses_kernel(self) -> bool:
        """Whether this optimizer takes the fused CPU kernel where it applies."""
        return self._kernel

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (see ``torch.optim.Optimizer``); its hyperparameters are validated."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        check_hyperparameters(
            **{k: group[k] for k in self.defaults}, where=f"param_groups[{index}]."
        )
        excluded = group.get("excluded")
        if excluded is None:
            excluded = [False] * len(group["params"])
        elif (
            not isinstance(excluded, list | tuple)
            or len(excluded) != len(group["params"])
            or not all(isinstance(x, bool) for x in excluded)
        ):
            raise ConfigError(
                key=f"param_groups[{index}].excluded",
                problem=f"expected one true or false per parameter ({len(group['params'])}), "
                f"got {excluded!r}",
            )
        self._lp_groups.append(list(group["params"]))
        self._lp_excluded.append(list(excluded))
        self._lp_ids.update(id(p) for p in group["params"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("adapt", True)
            group.setdefault("clip", False)
            group.setdefault("nesterov", False)
        self._compile = getattr(self, "_compile", False)
        self._kernel = getattr(self, "_kernel", True)
        self._plans = {}
        self._lp_groups = getattr(self, "_lp_groups", [])
        self._lp_excluded = getattr(
            self, "_lp_excluded", [[False] * len(g) for g in self._lp_groups]
        )
        self._lp_ids = getattr(self, "_lp_ids", set())
        self._layouts = {}
        self._started = getattr(self, "_started", False) or bool(self.state)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient.

        The first call is a no-op when every gradient is exactly zero and no momentum buffer
        exists yet: that is DeepSpeed's set-up call under bf16 (``initialize_optimizer_states``
        steps once with zero gradients), which would otherwise decay the weights by
        ``lr * weight_decay`` and start the momentum buffers at ``weight_decay * p``.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._started:
            if self._is_setup_step():
                return loss
            self._started = True
        for index, group in enumerate(self.param_groups):
            self._step_group(index, group)
        return loss

    def _is_setup_step(self) -> bool:
        """True for a first step whose gradients (at least one) are all exactly zero.

        Under ZeRO-1/2 each rank sees only its partition's gradient, which can be all zero on
        one rank in a real step: the ranks decide together (one collective, on the first step
        only), or that rank would skip the step and leave the others in the norm all-reduce.
        """
        if self.state:
            return False
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        all_zero = bool(grads) and not any(bool(g.any()) for g in grads)
        for group in self.param_groups:
            active = [p for p in group["params"] if p.grad is not None]
            layout = self._group_partition(group, active)
            if layout is not None:
                return zero.on_every_rank(all_zero, layout)
        return all_zero

    def _group_partition(
        self, group: dict[str, Any], active: list[Tensor]
    ) -> zero.PartitionLayout | None:
        """The layout of an adapted group (its tensors with a gradient: ``active``) that
        DeepSpeed (ZeRO-1/2) turned into one flat partition; None for an ordinary group."""
        if group["adapt"] and len(active) == 1 and id(active[0]) not in self._lp_ids:
            return self._partition_layout(active[0])
        return None

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        active = [p for p in group["params"] if p.grad is not None]
        if not active:
            return
        layout = self._group_partition(group, active)
        if layout is not None:
            self._step_partition(layout, group)
            return
        excluded = group.get("excluded")
        if excluded is None or not any(excluded):
            self._step_params((index, 0), active, group)
            return
        if len(excluded) != len(group["params"]):
            raise RuntimeError(
                f"LARS: param_groups[{index}] has {len(group['params'])} parameters but "
                f"{len(excluded)} 'excluded' entries"
            )
        # a group built for ZeRO (excluded parameters marked, not split off) that DeepSpeed did
        # not flatten: the excluded parameters step as a group of their own would
        out = {id(p) for p, x in zip(group["params"], excluded, strict=True) if x}
        self._step_params((index, 0), [p for p in active if id(p) not in out], group)
        plain = {**group, "adapt": False, "weight_decay": 0.0}
        self._step_params((index, 1), [p for p in active if id(p) in out], plain)

    def _step_params(
        self, key: tuple[int, int], active: list[Tensor], group: dict[str, Any]
    ) -> None:
        """The ordinary (unpartitioned) step of the tensors ``active``, with the options of
        ``group``; ``key`` names the cached plan."""
        if not active:
            return
        cached = self._plans.get(key)
        # by identity: ``==`` on tensors is elementwise
        if (
            cached is None
            or len(cached[0]) != len(active)
            or any(a is not b for a, b in zip(cached[0], active, strict=True))
        ):
            cached = self._plans[key] = (active, plan_buckets(active, self._compile, self._kernel))
        momentum = group["momentum"]
        for bucket in cached[1]:
            params = active if len(cached[1]) == 1 else [active[i] for i in bucket.indices]
            grads = [p.grad for p in params if p.grad is not None]  # all of them: active
            bufs = self._momentum_buffers(params) if momentum != 0 else []
            if bucket.kernel:
                kernel = kernel_module()
                assert kernel is not None  # the plan has kernel buckets only once it loaded
                skipped = kernel.lars_step(
                    params,
                    grads,
                    bufs,
                    float(group["lr"]),
                    momentum,
                    group["weight_decay"],
                    group["trust_coefficient"],
                    group["eps"],
                    group["nesterov"],
                    group["clip"],
                    group["adapt"],
                )
                if not skipped:
                    continue
                # tensors laid out differently from their gradient or buffer: the general path
                params = [params[i] for i in skipped]
                grads = [grads[i] for i in skipped]
                bufs = [bufs[i] for i in skipped] if bufs else []
            self._step_eager(params, grads, bufs, group, bucket)

    def _partition_layout(self, flat: Tensor) -> zero.PartitionLayout | None:
        """The ZeRO-1/2 layout of a group's only tensor when it is none of the parameters LARS
        was built with; None when it is a whole-parameter copy (bf16 stage 0 keeps one fp32
        master per parameter), which the ordinary path handles."""
        cached = self._layouts.get(id(flat))
        if cached is not None and cached.flat is flat:
            return cached
        layout = zero.checked_layout(flat, self._lp_groups, self._lp_excluded)
        if layout is None:
            return None
        self._layouts[id(flat)] = layout
        return layout

    def _step_partition(self, layout: zero.PartitionLayout, group: dict[str, Any]) -> None:
        """An adapted group that DeepSpeed (ZeRO-1/2) turned into one flat partition: trust
        ratios from whole-parameter norms over all ranks (zero.py)."""
        flat = layout.flat
        grad = flat.grad
        if grad is None:  # never: _step_group passes only a partition that has a gradient
            return
        buf = self._momentum_buffers([flat])[0] if group["momentum"] != 0 else None
        # the fused kernel only for a CPU partition (CPU training, or ZeRO-Offload's CPU copy
        # on a GPU machine): loading it for a GPU partition would compile it for nothing
        on_cpu = flat.device.type == "cpu"
        kernel = kernel_module() if self._kernel and on_cpu else None
        zero.step_partition(layout, grad, buf, group, kernel)

    def _step_eager(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        group: dict[str, Any],
        bucket: Bucket,
    ) -> None:
        """The PyTorch implementation, for one bucket (or the tensors the kernel skipped)."""
        if group["adapt"] and bucket.compiled and self._run_compiled(params, grads, bufs, group):
            return
        # PyTorch's fused SGD kernel on CPU assumes that all its tensors share one layout
        fused = bucket.fused and same_strides(params, grads, bufs)
        if not group["adapt"]:
            momentum_sgd(params, grads, bufs, group, group["weight_decay"], fused)
        elif bucket.large and fused and all(p.is_contiguous() for p in params):
            lars_large_cpu(params, grads, bufs, group)
        else:
            lars_foreach(params, grads, bufs, group, fused)

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

    def _run_compiled(
        self, params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]
    ) -> bool:
        """Update through the compiled loop; False (after one warning) if it cannot compile."""
        if not self._compile:
            return False
        try:
            lars_compiled(params, grads, bufs, group)
        except Exception as exc:  # any compiler failure means: run eagerly
            self._compile = False
            warnings.warn(
                f"LARS(compile=True): torch.compile failed, using the eager implementation "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        return True
