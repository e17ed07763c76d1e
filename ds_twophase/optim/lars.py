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
tensors go through a small C++ kernel (``lars_kernel.cpp``) that does the whole update of a
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

Under DeepSpeed ZeRO-1/2 a group arrives as one flat partition of this rank; the trust ratios
are then computed from whole-parameter norms summed over the ranks (``zero_lars.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..errors import ConfigError, check_number
from . import zero_lars

__all__ = ["LARS", "kernel_available"]

# CPU tuning, measured with bench/lars.py. Weights + grads of one bucket stay in the last-level
# cache between the norm pass and the update pass.
_CPU_BUCKET_BYTES = 4 << 20
# Tensors this large take the per-tensor CPU path: its per-call overhead is small against
# their memory traffic.
_CPU_LARGE_NUMEL = 1 << 16
# Slice length of that path: ``d`` of one slice (2 MiB in fp32) is still in cache when the fused
# kernel reads it back.
_CPU_SLICE_NUMEL = 1 << 19

_FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")

# The fused CPU kernel (see the module docstring and lars_kernel.cpp).
_KERNEL_ENV = "DS_TWOPHASE_LARS_KERNEL"
_KERNEL_SOURCE = Path(__file__).with_name("lars_kernel.cpp")
_KERNEL_DTYPES = (torch.float32, torch.float64)
# -ffp-contract=off: the compiler adds no fused multiply-adds of its own, so the kernel rounds
# where its source says (like PyTorch's CPU ops, see lars_kernel.cpp). No -march=native: the
# cache directory may be shared by machines with different CPUs (the kernel picks its AVX2 or
# baseline loops at run time).
_KERNEL_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
_KERNEL_LDFLAGS = ["-fopenmp"]
_kernel_lock = threading.Lock()
# None: not tried yet; False: disabled or failed (warned once); else the loaded module
_kernel: ModuleType | bool | None = None

_log = logging.getLogger(__name__)


def _kernel_module() -> ModuleType | None:
    """The fused CPU kernel, built or loaded on the first call; None if it is unavailable."""
    global _kernel
    if _kernel is None:
        with _kernel_lock:
            if _kernel is None:
                _kernel = _load_kernel()
    return _kernel if isinstance(_kernel, ModuleType) else None


def kernel_available() -> bool:
    """Whether the fused CPU kernel can be used here (builds or loads it on the first call)."""
    return _kernel_module() is not None


def _load_kernel() -> ModuleType | bool:
    """Compile (once per machine and source version) and import the kernel, or warn once."""
    if os.environ.get(_KERNEL_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        source = _KERNEL_SOURCE.read_bytes()
        # A name per source, flags and torch version: a different checkout or torch gets its
        # own build directory instead of rebuilding over (and racing with) another's.
        digest = hashlib.sha1(
            source + repr((_KERNEL_CFLAGS, _KERNEL_LDFLAGS, torch.__version__)).encode()
        ).hexdigest()[:12]
        # importing cpp_extension logs a warning about CUDA_HOME on machines without CUDA
        ext_log = logging.getLogger("torch.utils.cpp_extension")
        level = ext_log.level
        ext_log.setLevel(logging.ERROR)
        try:
            from torch.utils import cpp_extension
        finally:
            ext_log.setLevel(level)
        _log.info("LARS: loading the fused CPU kernel (the first time: a build of 10-15 s)")
        # torch serialises concurrent builds of one name with a file lock in its build directory
        return cpp_extension.load(
            name=f"ds_twophase_lars_{digest}",
            sources=[str(_KERNEL_SOURCE)],
            extra_cflags=_KERNEL_CFLAGS,
            extra_ldflags=_KERNEL_LDFLAGS,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a read-only cache, ...: run without it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if len(first) > 200:  # a failed build quotes the whole compiler command line
            first = first[:200] + " ..."
        _log.debug("LARS: the fused CPU kernel failed to build or load", exc_info=True)
        warnings.warn(
            f"LARS: the fused CPU kernel is unavailable, using the slower PyTorch "
            f"implementation ({type(exc).__name__}: {first}); set {_KERNEL_ENV}=0 to skip "
            f"the attempt",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )
        return False


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning about the frame that called into torch.optim / LARS."""
    # the frames between here and the caller (this module, torch's optimizer and no_grad
    # wrappers) change with torch versions, so they are counted rather than hard-coded
    internal = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)
    level = 1
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        level, frame = level + 1, frame.f_back
    return level


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
    compile: Any = False,
    where: str = "",
) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) keyed ``where + name`` for the first
    out-of-range hyperparameter (the shared number check)."""
    try:
        check_number("lr", lr, low=0)
        check_number("momentum", momentum, low=0, high=1, high_open=True)
        check_number("weight_decay", weight_decay, low=0)
        check_number("trust_coefficient", trust_coefficient, low=0, low_open=True)
        check_number("eps", eps, low=0)
        flags = (("nesterov", nesterov), ("clip", clip), ("adapt", adapt), ("compile", compile))
        for name, value in flags:
            if not isinstance(value, bool):
                raise ConfigError(key=name, problem=f"expected true or false, got {value!r}")
        if nesterov and momentum == 0:
            raise ConfigError(key="nesterov", problem="Nesterov momentum needs momentum > 0")
    except ConfigError as exc:
        raise exc.under(where) from None


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
        _check_hyperparameters(**defaults, compile=compile)
        self._compile = compile
        self._kernel = True  # off with disable_kernel()
        self._plans: dict[int, tuple[list[Tensor], list[_Bucket]]] = {}
        # the parameters of each group as given (model parameters); under ZeRO-1/2 DeepSpeed
        # replaces a group's params by one flat partition, mapped back to these (zero_lars.py)
        self._lp_groups: list[list[Tensor]] = []
        self._lp_ids: set[int] = set()
        self._layouts: dict[int, zero_lars.PartitionLayout] = {}
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
        self._lp_groups.append(list(group["params"]))
        self._lp_ids.update(id(p) for p in group["params"])
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
        self._compile = getattr(self, "_compile", False)
        self._kernel = getattr(self, "_kernel", True)
        self._plans = {}
        self._lp_groups = getattr(self, "_lp_groups", [])
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
        """True for a first step whose gradients (at least one) are all exactly zero."""
        if self.state:
            return False
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        return bool(grads) and not any(bool(g.any()) for g in grads)

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        active = [p for p in group["params"] if p.grad is not None]
        if not active:
            return
        if group["adapt"] and len(active) == 1 and id(active[0]) not in self._lp_ids:
            layout = self._partition_layout(active[0])
            if layout is not None:
                self._step_partition(layout, group)
                return
        cached = self._plans.get(index)
        # by identity: ``==`` on tensors is elementwise
        if (
            cached is None
            or len(cached[0]) != len(active)
            or any(a is not b for a, b in zip(cached[0], active, strict=True))
        ):
            cached = self._plans[index] = (active, _plan(active, self._compile, self._kernel))
        momentum = group["momentum"]
        for bucket in cached[1]:
            params = active if len(cached[1]) == 1 else [active[i] for i in bucket.indices]
            grads = [p.grad for p in params]
            bufs = self._momentum_buffers(params) if momentum != 0 else []
            if bucket.kernel:
                kernel = _kernel_module()
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

    def _partition_layout(self, flat: Tensor) -> zero_lars.PartitionLayout | None:
        """The ZeRO-1/2 layout of a group's only tensor when it is none of the parameters LARS
        was built with; None when it is a whole-parameter copy (bf16 stage 0 keeps one fp32
        master per parameter), which the ordinary path handles."""
        cached = self._layouts.get(id(flat))
        if cached is not None and cached.flat is flat:
            return cached
        layout = zero_lars.find_layout(flat, self._lp_groups)
        if layout is None:
            lp = [p for g in self._lp_groups for p in g]
            if any(getattr(p, "_hp_mapping", None) is not None or hasattr(p, "ds_id") for p in lp):
                raise RuntimeError(
                    "LARS: DeepSpeed partitioned the parameters, but this rank's partition of a "
                    "parameter group maps to none of them (ZeRO stage 3, or a group smaller "
                    "than the number of ranks); per-layer trust ratios cannot be computed. "
                    "LARS works with zero_optimization.stage 0, 1 and 2"
                )
            return None
        zero_lars.check_layout(layout)
        self._layouts[id(flat)] = layout
        return layout

    def _step_partition(self, layout: zero_lars.PartitionLayout, group: dict[str, Any]) -> None:
        """An adapted group that DeepSpeed (ZeRO-1/2) turned into one flat partition: trust
        ratios from whole-parameter norms over all ranks (zero_lars.py)."""
        flat = layout.flat
        grad = flat.grad
        if grad is None:  # never: _step_group passes only a partition that has a gradient
            return
        w_norm, g_norm = zero_lars.partition_norms(layout, grad)
        ratios = zero_lars.trust_ratios_from_norms(w_norm, g_norm, group)
        buf = self._momentum_buffers([flat])[0] if group["momentum"] != 0 else None
        zero_lars.step_fragments(layout, grad, buf, ratios, group)

    def _step_eager(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        group: dict[str, Any],
        bucket: _Bucket,
    ) -> None:
        """The PyTorch implementation, for one bucket (or the tensors the kernel skipped)."""
        if group["adapt"] and bucket.compiled and self._run_compiled(params, grads, bufs, group):
            return
        # PyTorch's fused SGD kernel on CPU assumes that all its tensors share one layout
        fused = bucket.fused and _same_strides(params, grads, bufs)
        if not group["adapt"]:
            _sgd(params, grads, bufs, group, group["weight_decay"], fused)
        elif bucket.large and fused and all(p.is_contiguous() for p in params):
            self._lars_large_cpu(params, grads, bufs, group)
        else:
            _lars_foreach(params, grads, bufs, group, fused)

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

    def _lars_large_cpu(
        self, params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]
    ) -> None:
        """Large contiguous CPU tensors: d = ratio * g per slice, then fused SGD on that slice.

        The kernel adds ``weight_decay * p`` with a float weight decay, so ``ratio * wd`` is
        passed as that float: d = ratio * g + ratio * wd * p in the same memory pass as the
        momentum and parameter updates. The ratios are read on the host for that; for CPU
        tensors this is a memory read with no device to wait for (accelerators never get here).
        """
        ratios = _trust_ratios(params, grads, group).tolist()
        wd, m, n = group["weight_decay"], group["momentum"], _CPU_SLICE_NUMEL
        scratch = torch.empty(min(n, max(p.numel() for p in params)), dtype=params[0].dtype)
        for i, (p, g, ratio) in enumerate(zip(params, grads, ratios, strict=True)):
            flat_p, flat_g = p.view(-1), g.view(-1)
            flat_b = bufs[i].view(-1) if m != 0 else None
            for start in range(0, flat_p.numel(), n):
                stop = min(start + n, flat_p.numel())
                d = torch.mul(flat_g[start:stop], ratio, out=scratch[: stop - start])
                torch._fused_sgd_(
                    [flat_p[start:stop]],
                    [d],
                    [flat_b[start:stop]] if flat_b is not None else [],
                    weight_decay=wd * ratio,
                    momentum=m,
                    lr=group["lr"],
                    dampening=0.0,
                    nesterov=group["nesterov"],
                    maximize=False,
                    is_first_step=False,
                )

    def _run_compiled(
        self, params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]
    ) -> bool:
        """Update through the compiled loop; False (after one warning) if it cannot compile."""
        if not self._compile:
            return False
        lr = group["lr"]
        try:
            _compiled_lars()(
                params,
                grads,
                bufs,
                # a tensor, so that the scheduler's new lr each step does not recompile
                torch.tensor(lr, dtype=torch.float64),
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                trust_coefficient=group["trust_coefficient"],
                eps=group["eps"],
                nesterov=group["nesterov"],
                clip=group["clip"],
            )
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


class _Bucket:
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


def _plan(params: list[Tensor], compile: bool = False, kernel: bool = False) -> list[_Bucket]:
    """Split parameters into buckets of one device and dtype (see the module docstring).

    With ``kernel`` (and the fused CPU kernel available) the float32/float64 CPU tensors of a
    kind form one bucket for it: the kernel keeps each tensor in cache between its two passes
    by itself. Otherwise, with ``compile``, the small CPU tensors of a kind share one bucket:
    one compiled graph.
    """
    by_kind: dict[tuple[torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        grad = p.grad
        assert grad is not None  # the step passes only parameters that have a gradient
        if grad.is_sparse:
            raise ValueError("LARS does not support sparse gradients")
        if p.is_complex():
            raise ValueError("LARS does not support complex parameters")
        by_kind.setdefault((p.device, p.dtype, grad.dtype), []).append(i)
    buckets = []
    for (device, dtype, grad_dtype), indices in by_kind.items():
        fused = device.type in _FUSED_DEVICES and dtype == grad_dtype and dtype.is_floating_point
        if device.type != "cpu":
            buckets.append(_Bucket(indices, large=False, fused=fused))
            continue
        # the kernel is built (or found unavailable) here, at the first step that needs it
        if (
            kernel
            and dtype == grad_dtype
            and dtype in _KERNEL_DTYPES
            and _kernel_module() is not None
        ):
            buckets.append(_Bucket(indices, large=False, fused=fused, kernel=True))
            continue
        # (members, bytes) of the open small and large bucket
        open_buckets: dict[bool, tuple[list[int], int]] = {False: ([], 0), True: ([], 0)}
        for i in indices:
            large = params[i].numel() >= _CPU_LARGE_NUMEL
            nbytes = 2 * params[i].numel() * params[i].element_size()
            members, size = open_buckets[large]
            if members and size + nbytes > _CPU_BUCKET_BYTES and (large or not compile):
                buckets.append(_Bucket(members, large, fused, compile and not large))
                members, size = [], 0
            open_buckets[large] = (members + [i], size + nbytes)
        for large, (members, _) in open_buckets.items():
            if members:
                buckets.append(_Bucket(members, large, fused, compile and not large))
    return buckets


def _same_strides(params: list[Tensor], *others: list[Tensor]) -> bool:
    """True when every tensor in ``others`` (lists parallel to params, or empty) has its
    parameter's strides."""
    strides = [p.stride() for p in params]
    return all(not xs or [x.stride() for x in xs] == strides for xs in others)


def _trust_ratios(params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> Tensor:
    """Per-tensor trust ratios as one 1-D tensor on the parameters' device (no host sync)."""
    norms = torch.stack(torch._foreach_norm(params + grads))
    w_norm, g_norm = norms[: len(params)], norms[len(params) :]
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


def _lars_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    group: dict[str, Any],
    fused: bool,
) -> None:
    """Multi-tensor path: d = ratio * (g + wd * p) for the whole list, then one SGD update."""
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
    grads: list[Tensor] | tuple[Tensor, ...],
    bufs: list[Tensor],
    group: dict[str, Any],
    weight_decay: float,
    fused: bool,
) -> None:
    """SGD with momentum, no dampening, on lists; ``bufs`` is empty when momentum is 0."""
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
