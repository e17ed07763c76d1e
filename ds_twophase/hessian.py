"""Principal Hessian eigenvalue of one layer's parameters by Lanczos on HVPs (paper Sec. 3.2).

``principal_eigenvalue`` estimates hmax, the eigenvalue of largest magnitude of the Hessian of
the mean training loss over a probe batch with respect to the parameters of one output-side
layer (a diagonal block of the full Hessian). It runs in one process and calls no collectives;
the distributed "sharded" mode passes an ``hvp_reduce`` hook that sums the HVPs over ranks.

Design choices (the why):

* **No side effects by construction.** The forward runs through ``torch.func.functional_call``
  with detached aliases of the parameters (fresh leaves for the probed layer) and clones of the
  buffers, so the model's parameters, buffers (BatchNorm running stats, ``num_batches_tracked``),
  ``.grad`` tensors and ``requires_grad`` flags are never written, whatever the BatchNorm mode.
  HVPs come from ``torch.autograd.grad``, which does not accumulate into ``.grad``. Module
  train/eval flags and the RNG states (torch CPU and CUDA, ``random``, numpy) are saved and
  restored in ``finally``, so an exception mid-probe leaves the model as it was too.
* **Deterministic Hessian.** The whole model is put in eval mode (dropout, stochastic depth and
  gradient checkpointing off). ``bn_mode="eval"`` uses BatchNorm running statistics, so the
  micro-batch split does not change the answer; ``bn_mode="train"`` switches only the BatchNorm
  modules to batch statistics (their running-stat updates land in the throw-away clones).
* **Graph reuse (exact method).** Only the probed layer's parameters require grad, so one forward
  per micro-batch records exactly the part of the network downstream of that layer (the "tail":
  for the last conv of ResNet-20, the conv, BN, residual add, pooling, classifier and loss). We
  take ``g = d(n_i * loss_i)/d(theta)`` with ``create_graph=True`` once and keep that graph; each
  Lanczos step is then one double backward ``d(g.v)/d(theta)`` through the tail with
  ``retain_graph=True``: no forward is ever repeated. Caching only the (detached) layer input
  and re-running "the rest of the network" would be wrong in general: with skip connections the
  tail also consumes tensors that bypass the layer (the residual), and an ``nn.Module`` offers
  no generic way to run only its tail. The autograd graph captures exactly the dependency cone
  of the layer, residuals included, for any model.
* **Bounded memory.** The bytes each micro-batch's graph holds are measured with
  ``saved_tensors_hooks`` (unique storages, excluding parameters, buffers and inputs that exist
  anyway). Graphs are kept while they fit ``max_graph_bytes``; a micro-batch that does not fit
  contributes to the first HVP right away and is recomputed (forward + HVP) in later iterations.
  Peak memory is the budget plus one micro-batch's graph.
* **Mixed precision.** When any floating parameter or buffer is narrower than float32 (bf16 or
  fp16 models), the probe runs on temporary float32 copies of all parameters and buffers, with
  float32 inputs (the model's own tensors stay untouched); float64 models are probed in float64.
* **Finite differences (paper Eq. 8).** ``Hv ~= (grad F(w + r v) - grad F(w)) / r`` restricted to
  the layer, with ``v`` of unit norm and ``r = sqrt(eps) * (1 + ||w||)`` (``eps`` the machine
  epsilon of the compute dtype), the usual step for forward-difference Jacobian-vector products
  (it balances truncation error ~ r against rounding error ~ eps/r). ``grad F(w)`` is computed
  once; each iteration needs one forward over the probe batch and a backward through the tail,
  so this method costs far more than the exact one and is less accurate.
* **Lanczos, not plain power iteration.** The paper iterates ``v <- Hv / ||Hv||``. We run
  Lanczos on the same HVPs: its Krylov space contains every power iterate, so its largest Ritz
  value is never a worse estimate for the same number of HVPs, and it converges with the square
  root of the eigenvalue gap instead of the gap (on the MNIST-1D CNN: a third of the HVPs and
  errors 100x smaller, see docs/benchmarks.md). Full reorthogonalisation keeps the basis
  orthogonal; it costs ``max_iters`` vectors of the layer's size, negligible next to the graphs.
  The estimate is the Ritz value of largest magnitude (signed). It stops after ``max_iters``
  HVPs or when that value changes by less than ``tol`` (relative) between two steps; a
  non-finite HVP stops it with ``nan``.
* **Warm start.** ``v0`` starts the iteration from a given vector instead of the seeded random
  one; the result carries the final Ritz vector, so a caller probing a slowly changing model
  (one epoch apart) can start the next probe next to the answer and stop after fewer HVPs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from ds_twophase.errors import did_you_mean

log = logging.getLogger(__name__)

METHODS = ("exact", "finite_difference")
BN_MODES = ("eval", "train")
DEFAULT_MAX_GRAPH_BYTES = 2 * 1024**3

HVPReduce = Callable[[torch.Tensor | None, float], tuple[torch.Tensor, float]]
"""``hvp_reduce(vector, count) -> (vector, count)``: sums a process's sample-weighted HVP (a flat
vector) and its sample count over processes. ``vector=None`` announces that this process failed;
the hook must then raise on every process (after taking part in its collectives)."""

LossFn = Callable[[Any, Any], torch.Tensor]
"""``loss_fn(outputs, targets)``: the mean loss of one micro-batch, as a scalar tensor."""


@dataclasses.dataclass
class EigenResult:
    """Outcome of ``principal_eigenvalue``."""

    value: float
    """Estimated eigenvalue of largest magnitude (signed); ``nan`` if an HVP was not finite."""
    iterations: int
    """Hessian-vector products performed (Lanczos steps)."""
    layer: list[str]
    """Module name(s) whose parameters span the probed Hessian block."""
    num_params: int
    """Number of parameters in that block (the Hessian is num_params x num_params)."""
    num_samples: int
    """Samples in the probe batch (over all processes when ``hvp_reduce`` sums them)."""
    converged: bool
    """True when the relative change fell below ``tol`` before ``max_iters``."""
    seconds: float
    """Wall time of the whole call."""
    vector: torch.Tensor | None = None
    """The Ritz vector of ``value`` (unit norm, flat, in the probe's compute dtype on the model's
    device; ``None`` when ``value`` is ``nan``): pass it as ``v0`` to warm-start the next call."""


# ----------------------------------------------------------------------------------------------
# Layer choice


def parametric_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (not through children), by qualified name."""
    return {
        name: m
        for name, m in model.named_modules()
        if name and next(m.parameters(recurse=False), None) is not None
    }


def resolve_layer(
    model: nn.Module, layer: str | Sequence[str], example_inputs: Any = None
) -> list[str]:
    """Module names whose parameters form the probed block.

    ``"auto"`` runs one no-grad forward on ``example_inputs`` (one or two samples are enough) to
    find the forward execution order, then picks the largest (most parameters; the later one on
    ties) of the last three parametric leaf modules, and logs it. A name or a list of names of
    modules with parameters overrides it; an unknown name raises ``ValueError`` listing the
    candidates. The model and the RNG states are left as they were.
    """
    candidates = parametric_modules(model)
    if isinstance(layer, str) and layer == "auto":
        if example_inputs is None:
            raise ValueError("layer='auto' needs example_inputs to find the forward order")
        return [_auto_layer(model, candidates, example_inputs)]
    names = [layer] if isinstance(layer, str) else list(layer)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"layer must be 'auto', a module name or a list of names, got {layer!r}")
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules or next(modules[n].parameters(), None) is None:
            raise ValueError(
                f"unknown probe layer {n!r}{did_you_mean(n, candidates)}; "
                f"modules with parameters: {', '.join(candidates)}"
            )
    return list(dict.fromkeys(names))


def _auto_layer(model: nn.Module, candidates: dict[str, nn.Module], example_inputs: Any) -> str:
    leaves = {n: m for n, m in candidates.items() if next(m.children(), None) is None}
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, _n=n: None if _n in order else order.append(_n))
        for n, m in leaves.items()
    ]
    try:
        with _probe_modes(model, "eval"), preserve_rng_state(), torch.no_grad():
            # The model runs as it is here: feed floating inputs in its own dtype.
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            inputs = _shrink(example_inputs)
            model(inputs if dtype is None else _cast_tree(inputs, dtype))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("layer='auto': no module with parameters ran in the forward pass")
    last = order[-3:]
    counts = {n: _numel(leaves[n]) for n in last}
    # max() keeps the first maximum; scan from the output side so ties go to the later module.
    best = max(reversed(last), key=lambda n: counts[n])
    log.info(
        "Hessian probe layer (auto): %s, %d parameters (largest of the last three: %s)",
        best,
        counts[best],
        ", ".join(f"{n}={counts[n]}" for n in last),
    )
    return best


def _shrink(inputs: Any) -> Any:
    # Two samples suffice to find the execution order (two, not one, keeps BatchNorm-in-train
    # style code paths happy) and keep the extra forward negligible.
    return inputs[:2] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else inputs


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# State that must survive the probe unchanged


@contextlib.contextmanager
def preserve_rng_state() -> Iterator[None]:
    """Restore torch (CPU and every CUDA device), ``random`` and numpy RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py = random.getstate()
    np_state = None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # numpy is optional for this module
        np = None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        if np_state is not None:
            np.random.set_state(np_state)


@contextlib.contextmanager
def _probe_modes(model: nn.Module, bn_mode: str) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.train()
        yield
    finally:
        for m, training in modes:
            m.training = training


class _InferenceBatchNormAsAffine(TorchFunctionMode):
    """Evaluates inference-mode ``F.batch_norm`` as the per-channel affine map it is.

    With running statistics, batch norm is ``x * s + t`` (``s = weight / sqrt(var + eps)``,
    ``t = bias - mean * s``): the same function of the input, weight and bias, so the same
    Hessian. Autograd's double backward of ``batch_norm`` uses the general (batch-statistics)
    formula instead, about a sixth of each HVP's time on the MNIST-1D CNN (docs/benchmarks.md);
    through ``x * s + t`` the second pass is one multiplication. Calls with batch statistics
    (``bn_mode="train"``) pass through unchanged.
    """

    _SIGNATURE = inspect.signature(F.batch_norm)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        a = self._SIGNATURE.bind(*args, **kwargs)
        a.apply_defaults()
        x, mean, var = a.arguments["input"], a.arguments["running_mean"], a.arguments["running_var"]
        if a.arguments["training"] or mean is None or var is None:
            return func(*args, **kwargs)
        scale = torch.rsqrt(var + a.arguments["eps"])
        if a.arguments["weight"] is not None:
            scale = scale * a.arguments["weight"]
        shift = -mean * scale
        if a.arguments["bias"] is not None:
            shift = shift + a.arguments["bias"]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)


# ----------------------------------------------------------------------------------------------
# The functional view of the model used by both HVP methods


class _Functional:
    """Runs the model on substitute tensors: detached parameters (fresh leaves for the layer),
    cloned buffers, all in the compute dtype; nothing of the model is written."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        layer: list[str],
        buffers: dict[str, torch.Tensor] | None = None,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.dtype = _compute_dtype(model)
        modules = dict(model.named_modules())
        wanted = {id(p) for n in layer for p in modules[n].parameters()}
        self.base: dict[str, torch.Tensor] = {}
        self.layer_names: list[str] = []
        self.layer_values: list[torch.Tensor] = []
        for name, p in model.named_parameters():  # deduplicates tied parameters
            t = _cast(p.detach(), self.dtype)
            if id(p) in wanted:
                self.layer_names.append(name)
                self.layer_values.append(t)
            else:
                self.base[name] = t
        for name, b in model.named_buffers():
            if buffers is not None and name in buffers:
                b = buffers[name].to(b.device)
            # Clones, so running-stat updates in bn_mode="train" never reach the model.
            self.base[name] = _cast(b.detach(), self.dtype).clone()
        self.numels = [t.numel() for t in self.layer_values]
        self.num_params = sum(self.numels)
        self.device = self.layer_values[0].device
        self.exclude_ptrs = {_storage_ptr(t) for t in [*self.base.values(), *self.layer_values]}

    def loss(
        self, inputs: Any, targets: Any, layer_tensors: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Mean loss of one micro-batch with ``layer_tensors`` in place of the layer's params."""
        tensors = dict(self.base)
        tensors.update(zip(self.layer_names, layer_tensors, strict=True))
        out = functional_call(self.model, tensors, (_cast_tree(inputs, self.dtype),))
        loss = self.loss_fn(out, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (the mean loss of the batch)")
        return loss.reshape(()).to(self.dtype)

    def leaves(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fresh leaf tensors (requiring grad) holding ``values``, without copying them."""
        return [v.detach().requires_grad_(True) for v in values]

    def flat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one vector (``None`` = zeros)."""
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1)
            for t, n in zip(tensors, self.numels, strict=True)
        ]
        return torch.cat(parts)

    def unflat(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped like the layer's parameters."""
        return [
            c.view_as(t) for c, t in zip(vec.split(self.numels), self.layer_values, strict=True)
        ]


def _compute_dtype(model: nn.Module) -> torch.dtype:
    dtypes = [t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    widest = max(dtypes, key=lambda d: torch.finfo(d).bits, default=torch.float32)
    return widest if torch.finfo(widest).bits >= 32 else torch.float32


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def _cast_tree(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return _cast(x, dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_tree(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast_tree(v, dtype) for k, v in x.items()}
    return x


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _batch_size(inputs: Any, targets: Any) -> int:
    for x in (targets, inputs):
        while isinstance(x, (list, tuple)) and x:
            x = x[0]
        if isinstance(x, dict) and x:
            x = next(iter(x.values()))
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    raise ValueError("cannot tell the micro-batch size: inputs or targets must be batched tensors")


class _SavedBytes:
    """Counts the unique storages autograd saves while active (the memory a graph holds)."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or nested: not countable
            return t
        ptr = storage.data_ptr()
        if ptr not in self.exclude and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


# ----------------------------------------------------------------------------------------------
# HVP engines: each returns the local sample-weighted sum  sum_i n_i * H_i v  as a flat vector


class _ExactHVP:
    """Double-backward HVPs through graphs kept from one forward per micro-batch."""

    def __init__(
        self, fn: _Functional, batches: list[tuple[Any, Any]], v0: torch.Tensor, budget: int | None
    ):
        self.fn = fn
        self.leaves = fn.leaves(fn.layer_values)
        self.kept: list[torch.Tensor | None] | None = None  # sum of kept micro-batches' g
        self.spilled: list[tuple[Any, Any]] = []
        self.first: torch.Tensor | None = None  # spilled micro-batches' share of H v0
        self.graph_bytes = 0
        for inputs, targets in batches:
            counter = _SavedBytes(fn.exclude_ptrs | _input_ptrs(inputs))
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                g = self._grad_with_graph(inputs, targets)
            if budget is None or self.graph_bytes + counter.bytes <= budget:
                self.graph_bytes += counter.bytes
                self.kept = (
                    g
                    if self.kept is None
                    else [_add(a, b) for a, b in zip(self.kept, g, strict=True)]
                )
            else:
                # Does not fit: use the graph once now (v0 is known), then drop it.
                part = self._hvp(g, v0, retain=False)
                self.first = part if self.first is None else self.first + part
                self.spilled.append((inputs, targets))
        self.pending_first = bool(self.spilled)
        if self.spilled:
            log.info(
                "Hessian probe: %d of %d micro-batch graphs over the %s-byte budget are recomputed "
                "each iteration",
                len(self.spilled),
                len(batches),
                budget,
            )

    def _grad_with_graph(self, inputs: Any, targets: Any) -> list[torch.Tensor | None]:
        n = _batch_size(inputs, targets)
        loss = self.fn.loss(inputs, targets, self.leaves) * n
        return list(torch.autograd.grad(loss, self.leaves, create_graph=True, allow_unused=True))

    def _hvp(self, g: list[torch.Tensor | None], v: torch.Tensor, retain: bool) -> torch.Tensor:
        pairs = [
            (gi, vi)
            for gi, vi in zip(g, self.fn.unflat(v), strict=True)
            if gi is not None and gi.requires_grad
        ]
        if not pairs:  # the gradient does not depend on the layer: zero Hessian block
            return torch.zeros_like(v)
        outs, grads = zip(*pairs, strict=True)
        hv = torch.autograd.grad(
            outs, self.leaves, grad_outputs=grads, retain_graph=retain, allow_unused=True
        )
        return self.fn.flat(hv)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(v) if self.kept is None else self._hvp(self.kept, v, retain=True)
        if self.pending_first:
            self.pending_first = False
            return total + self.first
        for inputs, targets in self.spilled:
            total += self._hvp(self._grad_with_graph(inputs, targets), v, retain=False)
        return total


class _FiniteDiffHVP:
    """Paper Eq. 8: forward difference of layer gradients, one forward per micro-batch per HVP."""

    def __init__(self, fn: _Functional, batches: list[tuple[Any, Any]]):
        self.fn = fn
        self.batches = batches
        w = fn.flat(fn.layer_values)
        self.w = w
        self.r = math.sqrt(torch.finfo(fn.dtype).eps) * (1.0 + float(w.norm()))
        self.g0 = self._grad_sum(w)

    def _grad_sum(self, w: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(w)
        for inputs, targets in self.batches:
            leaves = self.fn.leaves(self.fn.unflat(w))
            loss = self.fn.loss(inputs, targets, leaves) * _batch_size(inputs, targets)
            total += self.fn.flat(torch.autograd.grad(loss, leaves, allow_unused=True))
        return total

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return (self._grad_sum(self.w + self.r * v) - self.g0) / self.r


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _input_ptrs(inputs: Any) -> set[int]:
    if isinstance(inputs, torch.Tensor):
        return {_storage_ptr(inputs)}
    if isinstance(inputs, (list, tuple)):
        return set().union(*(_input_ptrs(x) for x in inputs)) if inputs else set()
    if isinstance(inputs, dict):
        return _input_ptrs(list(inputs.values()))
    return set()


# ----------------------------------------------------------------------------------------------
# Lanczos iteration


class _Reducer:
    """Wraps the optional ``hvp_reduce`` hook and knows whether peers must still be told about a
    local failure (only while the iteration loop is running and the hook has not raised)."""

    def __init__(self, hook: HVPReduce | None):
        self.hook = hook
        self.peers_informed = hook is None

    def __call__(self, vec: torch.Tensor, count: float) -> tuple[torch.Tensor, float]:
        if self.hook is None:
            return vec, count
        try:
            return self.hook(vec, count)
        except BaseException:
            self.peers_informed = True  # the hook raised on every process: nobody waits
            raise

    def done(self) -> None:
        """The loop is over: peers no longer wait for this process."""
        self.peers_informed = True

    def announce_failure(self) -> None:
        """Tell peers (through the hook's collectives) that this process failed."""
        if self.peers_informed:
            return
        self.peers_informed = True
        with contextlib.suppress(Exception):  # the hook raises by contract; the original wins
            self.hook(None, 0.0)


def principal_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Any, Any]],
    layer: str | Sequence[str] = "auto",
    *,
    max_iters: int = 20,
    tol: float = 1e-3,
    method: str = "exact",
    bn_mode: str = "eval",
    seed: int = 0,
    hvp_reduce: HVPReduce | None = None,
    max_graph_bytes: int | None = DEFAULT_MAX_GRAPH_BYTES,
    iteration_hook: Callable[[int], None] | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
    v0: torch.Tensor | None = None,
) -> EigenResult:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss w.r.t. one layer's params.

    ``batches`` yields ``(inputs, targets)`` micro-batches (already on the model's device) whose
    union is the probe batch; ``model(inputs)`` is called and ``loss_fn(outputs, targets)`` must
    return the micro-batch's mean loss. Micro-batches are weighted by their sizes, so the Hessian
    is that of the mean over all samples. ``layer``: see ``resolve_layer``. ``method``:
    ``"exact"`` (double backward) or ``"finite_difference"`` (paper Eq. 8). ``bn_mode``:
    ``"eval"`` (running statistics) or ``"train"`` (batch statistics, running stats untouched).
    ``seed`` fixes the start vector (drawn from a private generator) unless ``v0`` (any shape with
    the block's number of elements, e.g. the ``vector`` of an earlier result) is given. Lanczos
    stops after ``max_iters`` HVPs or when the relative change of the estimate is below ``tol``.

    ``hvp_reduce`` (distributed use) sums each local sample-weighted HVP and sample count over
    processes (see ``HVPReduce``); every process must pass the same layer, seed, ``v0`` and
    settings.
    When given, ``batches`` may be empty on some processes, and a failure on this process is
    announced through the hook before the exception propagates. ``max_graph_bytes`` bounds the
    memory of kept graphs (``None``: no bound; ``0``: recompute every micro-batch each
    iteration). ``buffers`` (by ``named_buffers`` name) replaces buffer values for the probe
    only, e.g. rank 0's BatchNorm statistics on every rank in sharded mode.
    ``iteration_hook(k)`` is called before the local work of iteration ``k`` (0 = setup) and
    may raise (progress reporting, fault injection).

    The model is left exactly as found (see the module docstring), also on exceptions.
    """
    start = time.perf_counter()
    reducer = _Reducer(hvp_reduce)
    try:
        _check_args(max_iters, tol, method, bn_mode, seed, max_graph_bytes)
        batches = list(batches)
        if not batches and hvp_reduce is None:
            raise ValueError("batches is empty: the probe needs at least one micro-batch")
        if isinstance(layer, str) and layer == "auto" and not batches:
            raise ValueError("layer='auto' needs at least one local micro-batch; pass layer names")
        names = resolve_layer(model, layer, batches[0][0] if batches else None)
        with _probe_modes(model, bn_mode), preserve_rng_state():
            result = _solve(
                model, loss_fn, batches, names, max_iters, tol, method, seed, reducer,
                max_graph_bytes, iteration_hook, buffers, v0,
            )  # fmt: skip
    except Exception:
        reducer.announce_failure()
        raise
    result.seconds = time.perf_counter() - start
    return result


def _check_args(
    max_iters: int, tol: float, method: str, bn_mode: str, seed: int, max_graph_bytes: int | None
) -> None:
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1, got {max_iters!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if max_graph_bytes is not None and (
        isinstance(max_graph_bytes, bool)
        or not isinstance(max_graph_bytes, int)
        or max_graph_bytes < 0
    ):
        raise ValueError(
            f"max_graph_bytes must be None or an integer >= 0, got {max_graph_bytes!r}"
        )


def _solve(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[tuple[Any, Any]],
    names: list[str],
    max_iters: int,
    tol: float,
    method: str,
    seed: int,
    reducer: _Reducer,
    max_graph_bytes: int | None,
    iteration_hook: Callable[[int], None] | None,
    buffers: dict[str, torch.Tensor] | None,
    v0: torch.Tensor | None,
) -> EigenResult:
    fn = _Functional(model, loss_fn, names, buffers)
    local_count = float(sum(_batch_size(x, y) for x, y in batches))
    v = _start_vector(fn, seed, v0)
    if iteration_hook is not None:
        iteration_hook(0)
    count = 0.0
    with torch.enable_grad(), _InferenceBatchNormAsAffine():
        engine = (
            _ExactHVP(fn, batches, v, max_graph_bytes)
            if method == "exact"
            else _FiniteDiffHVP(fn, batches)
        )

        def hvp(x: torch.Tensor, k: int) -> torch.Tensor:
            nonlocal count
            if iteration_hook is not None:
                iteration_hook(k)
            local = engine(x) if batches else torch.zeros_like(x)
            total, count = reducer(local, local_count)
            if count <= 0:
                raise ValueError("the probe batch has no samples")
            return total / count

        value, k, converged, vector = _lanczos(hvp, v, max_iters, tol)
    reducer.done()
    return EigenResult(
        value=value,
        iterations=k,
        layer=names,
        num_params=fn.num_params,
        num_samples=int(count),
        converged=converged,
        seconds=0.0,
        vector=vector,
    )


def _start_vector(fn: _Functional, seed: int, v0: torch.Tensor | None) -> torch.Tensor:
    if v0 is None:
        gen = torch.Generator().manual_seed(seed)  # private: global RNG streams are not consumed
        v = torch.randn(fn.num_params, generator=gen, dtype=torch.float64)
    else:
        if not isinstance(v0, torch.Tensor) or v0.numel() != fn.num_params:
            got = v0.numel() if isinstance(v0, torch.Tensor) else type(v0).__name__
            raise ValueError(f"v0 must be a tensor of {fn.num_params} elements, got {got}")
        v = v0.detach().reshape(-1).to(torch.float64)
        norm = float(v.norm())
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"v0 must be finite and non-zero, got norm {norm}")
    v = v.to(fn.device, fn.dtype)
    return v / v.norm()


def _lanczos(
    hvp: Callable[[torch.Tensor, int], torch.Tensor],
    q: torch.Tensor,
    max_iters: int,
    tol: float,
) -> tuple[float, int, bool, torch.Tensor | None]:
    """Lanczos with full reorthogonalisation from the unit vector ``q``.

    Returns ``(value, HVPs, converged, Ritz vector)``: the Ritz value of largest magnitude of
    the tridiagonal projection, stopping when it changes by less than ``tol`` (relative) between
    two steps or when the Krylov space is invariant (the value is then exact up to rounding).
    """
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    prev: float | None = None
    # A residual this small relative to the projected spectrum means the Krylov space is
    # invariant: the next vector would be rounding noise.
    breakdown = 100 * torch.finfo(q.dtype).eps
    for k in range(1, max_iters + 1):
        w = hvp(basis[-1], k)
        alpha = float(torch.dot(w, basis[-1]))
        if not (math.isfinite(alpha) and bool(torch.isfinite(w).all())):
            log.warning("Hessian probe: non-finite Hessian-vector product at iteration %d", k)
            return math.nan, k, False, None
        alphas.append(alpha)
        # Twice is enough (Kahan): the basis stays orthogonal to working precision, which
        # keeps spurious copies of converged Ritz values out of the projection.
        for _ in range(2):
            for b in basis:
                w -= torch.dot(w, b) * b
        beta = float(w.norm())
        evals, evecs = torch.linalg.eigh(_tridiagonal(alphas, betas))
        top = int(evals.abs().argmax())
        value = float(evals[top])
        coeffs = evecs[:, top].tolist()
        scale = float(evals.abs().max())
        invariant = beta <= breakdown * scale or scale == 0.0  # (scale 0: a zero block)
        converged = invariant or (prev is not None and abs(value - prev) < tol * abs(value))
        if converged or k == max_iters:
            return value, k, converged, _combine(basis, coeffs)
        prev = value
        betas.append(beta)
        basis.append(w / beta)
    raise ValueError(f"max_iters must be >= 1, got {max_iters}")


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    for i, b in enumerate(betas):
        t[i, i + 1] = t[i + 1, i] = b
    return t


def _combine(basis: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    out = torch.zeros_like(basis[0])
    for c, b in zip(coeffs, basis, strict=True):
        out.add_(b, alpha=c)
    return out / out.norm()
