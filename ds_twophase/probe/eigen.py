"""Principal Hessian eigenvalue of one layer's parameters by Lanczos on HVPs (paper Sec. 3.2).

``principal_eigenvalue`` estimates hmax, the eigenvalue of largest magnitude of the Hessian of
the mean training loss over a probe batch with respect to the parameters of one output-side
layer (a diagonal block of the full Hessian). It runs in one process and calls no collectives;
the distributed "sharded" mode passes an ``hvp_reduce`` hook that sums the HVPs over ranks.

Design choices (the why):

* **Lanczos, not plain power iteration.** The paper iterates ``v <- Hv / ||Hv||``. We run
  Lanczos on the same HVPs: its Krylov space contains every power iterate, so its largest Ritz
  value is never a worse estimate for the same number of HVPs, and it converges with the square
  root of the eigenvalue gap instead of the gap (on the MNIST-1D CNN: a third of the HVPs and
  errors 100x smaller, see docs/benchmarks.md). Full reorthogonalisation keeps the basis
  orthogonal; it costs ``max_iters`` vectors of the layer's size, negligible next to the graphs.
  The estimate is the Ritz value of largest magnitude (signed).
* **Stopping on the residual.** It stops after ``max_iters`` HVPs or, after at least
  ``MIN_STEPS``, when the relative Ritz residual ``||H x - theta x|| / |theta|`` is at most
  ``tol`` (free from the last ``beta`` and the Ritz vector's last component); a non-finite HVP
  stops it with ``nan``. The earlier rule, "the estimate changed by less than ``tol``", stalls
  on a smaller eigenvalue when the start lies near its eigenvector: the estimate barely moves
  for a few steps although it is not the largest.
* **Warm start.** ``v0`` starts the iteration next to a given vector (the previous probe's Ritz
  vector), so a caller probing a slowly changing model can stop after fewer HVPs. A sharper
  direction that appeared since is what the schedule must see, so the start always mixes in the
  seeded random vector (``WARM_START_MIX``): it never lies exactly on one eigenvector.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ds_twophase.errors import check_number
from ds_twophase.probe.config import BN_MODES, DEFAULT_MAX_GRAPH_BYTES, METHODS
from ds_twophase.probe.functional import Functional, InferenceBatchNormAsAffine, LossFn
from ds_twophase.probe.hvp import HessianOperator
from ds_twophase.probe.layer import preserve_rng_state, probe_modes, resolve_layer
from ds_twophase.probe.uncertainty import SampleSums, sample_sums

log = logging.getLogger("ds_twophase.probe")

HVPReduce = Callable[[torch.Tensor | None, float], tuple[torch.Tensor, float]]
"""``hvp_reduce(vector, count) -> (vector, count)``: sums a process's sample-weighted HVP (a flat
vector) and its sample count over processes. ``vector=None`` announces that this process failed;
the hook must then raise on every process (after taking part in its collectives)."""


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
    """True when the relative Ritz residual fell to ``tol`` (see ``residual``) within
    ``max_iters`` steps."""
    seconds: float
    """Wall time of the whole call."""
    vector: torch.Tensor | None = None
    """The Ritz vector of ``value`` (unit norm, flat, in the probe's compute dtype on the model's
    device; ``None`` when ``value`` is ``nan``): pass it as ``v0`` to warm-start the next call."""
    residual: float = math.nan
    """Relative Ritz residual ``||H x - value x|| / |value|`` of ``vector`` (``x``), the quantity
    the stopping rule compares with ``tol``."""
    graph_bytes: int = 0
    """Bytes of the autograd graphs kept between steps on this process (exact method; at most
    ``max_graph_bytes``; 0 for finite differences)."""
    hmax_se: float = math.nan
    """Standard error of ``value`` from the per-sample Rayleigh quotients along ``vector``
    (:mod:`ds_twophase.probe.uncertainty`); ``nan`` when unknown."""
    loss: float = math.nan
    """Mean loss over the probe batch at the probe's weights (the probe's own forward)."""
    loss_se: float = math.nan
    """Standard error of ``loss`` from the per-sample losses."""


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
        if self.peers_informed or self.hook is None:
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

    ``batches`` yields ``(inputs, targets)`` micro-batches whose union is the probe batch; keep
    them on the host (pinned for a GPU) and each is moved to the model's device only while it
    is used; ``model(inputs)`` is called and ``loss_fn(outputs, targets)`` must
    return the micro-batch's mean loss. Micro-batches are weighted by their sizes, so the Hessian
    is that of the mean over all samples. ``layer``: see ``resolve_layer``. ``method``:
    ``"exact"`` (double backward) or ``"finite_difference"`` (paper Eq. 8). ``bn_mode``:
    ``"eval"`` (running statistics) or ``"train"`` (batch statistics, running stats untouched).
    ``seed`` fixes the start vector (drawn from a private generator) unless ``v0`` (any shape with
    the block's number of elements, e.g. the ``vector`` of an earlier result) is given; then
    the start is ``v0`` mixed with that seeded vector (see ``start_vector``). Lanczos stops
    after ``max_iters`` HVPs or, from ``MIN_STEPS`` on, when the relative Ritz residual is at
    most ``tol`` (see ``lanczos``).

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
        with probe_modes(model, bn_mode), preserve_rng_state():
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
    check_number("max_iters", max_iters, low=1, integer=True)
    check_number("tol", tol, low=0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    check_number("seed", seed, low=0, integer=True)
    check_number("max_graph_bytes", max_graph_bytes, low=0, integer=True, optional=True)


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
    fn = Functional(model, loss_fn, names, buffers)
    operator = HessianOperator(fn, batches, method, max_graph_bytes)
    v = start_vector(fn.num_params, seed, v0).to(fn.device, fn.dtype)
    if iteration_hook is not None:
        iteration_hook(0)
    count = 0.0
    with torch.enable_grad(), InferenceBatchNormAsAffine():

        def hvp(x: torch.Tensor, k: int) -> torch.Tensor:
            nonlocal count
            if iteration_hook is not None:
                iteration_hook(k)
            total, count = reducer(operator(x), operator.num_samples)
            if count <= 0:
                raise ValueError("the probe batch has no samples")
            return total / count

        ritz = lanczos(hvp, v, max_iters, tol)
        sums = SampleSums()
        if ritz.vector is not None:  # the same on every process: it follows reduced values
            try:
                local = sample_sums(fn, batches, ritz.vector)
            except Exception as exc:  # hmax stands without its standard errors
                log.warning("Hessian probe: no standard errors (%s: %s)", type(exc).__name__, exc)
                local = SampleSums(math.nan, math.nan, math.nan, math.nan, math.nan)
            total, n = reducer(local.vector().to(fn.device), local.count)
            sums = SampleSums.from_vector(total, n)
    reducer.done()
    hmax_se, loss, loss_se = sums.stats()
    return EigenResult(
        value=ritz.value,
        iterations=ritz.steps,
        layer=names,
        num_params=fn.num_params,
        num_samples=int(count),
        converged=ritz.converged,
        seconds=0.0,
        vector=ritz.vector,
        residual=ritz.residual,
        graph_bytes=operator.graph_bytes,
        hmax_se=hmax_se,
        loss=loss,
        loss_se=loss_se,
    )


WARM_START_MIX = 0.3
"""Weight of the seeded random vector in a warm start: the start is
``sqrt(1 - m**2) * v0 + m * r`` (``r`` the seeded random unit vector made orthogonal to ``v0``,
``m`` this weight). It keeps a component along every eigenvector whatever ``v0`` is, so a start
that sits on a smaller eigenvalue's eigenvector cannot hide a larger one; 91% of the start's
energy stays on ``v0``. See docs/probe.md for the measurements behind the value."""

MIN_STEPS = 3
"""Fewest Lanczos steps before the residual test may stop the iteration (unless the Krylov space
is invariant): one or two steps from a start near an eigenvector can show a small residual for
that eigenvector before the random component has revealed a larger eigenvalue."""


def start_vector(n: int, seed: int, v0: torch.Tensor | None = None) -> torch.Tensor:
    """The unit start vector of length ``n`` (float64, CPU) for a probe with ``seed``.

    Without ``v0``: a Gaussian vector from a private generator seeded with ``seed`` (the global
    RNG streams are not consumed). With ``v0`` (a warm start): ``v0`` mixed with that seeded
    vector with weight :data:`WARM_START_MIX`; the same ``(seed, v0)`` always gives the same
    start, so a resumed run probes exactly as an uninterrupted one.
    """
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=gen, dtype=torch.float64)
    r = r / r.norm()
    if v0 is None:
        return r
    if not isinstance(v0, torch.Tensor) or v0.numel() != n:
        got = v0.numel() if isinstance(v0, torch.Tensor) else type(v0).__name__
        raise ValueError(f"v0 must be a tensor of {n} elements, got {got}")
    v = v0.detach().reshape(-1).to("cpu", torch.float64)
    norm = float(v.norm())
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"v0 must be finite and non-zero, got norm {norm}")
    v = v / norm
    r = r - torch.dot(r, v) * v
    if float(r.norm()) < 1e-6:  # v0 is (almost) the seeded vector itself: nothing to mix in
        return v
    r = r / r.norm()
    mixed = math.sqrt(1.0 - WARM_START_MIX**2) * v + WARM_START_MIX * r
    return mixed / mixed.norm()


@dataclasses.dataclass
class RitzPair:
    """Outcome of :func:`lanczos`."""

    value: float
    """The Ritz value of largest magnitude (signed); ``nan`` after a non-finite HVP."""
    steps: int
    """HVPs performed."""
    converged: bool
    """True when ``residual <= tol`` (or the Krylov space became invariant) before the last step."""
    residual: float
    """Relative Ritz residual ``||H x - value x|| / |value|`` of the unit Ritz vector ``x``
    (``nan`` after a non-finite HVP; ``0`` for a zero operator)."""
    vector: torch.Tensor | None
    """The unit Ritz vector ``x`` (``None`` after a non-finite HVP)."""


def lanczos(
    hvp: Callable[[torch.Tensor, int], torch.Tensor],
    q: torch.Tensor,
    max_iters: int,
    tol: float,
    min_steps: int = MIN_STEPS,
) -> RitzPair:
    """Lanczos with full reorthogonalisation from the unit vector ``q``; ``hvp(v, k)`` is the
    ``k``-th (1-based) product ``H v`` of a symmetric operator.

    Tracks the Ritz pair of largest magnitude of the tridiagonal projection ``T_k`` and stops
    after ``max_iters`` steps, when the Krylov space is invariant (the value is then exact up to
    rounding), or, from step ``min_steps`` on, when the pair's relative residual is at most
    ``tol``. That residual is free: for the Ritz vector ``x = V_k y``,
    ``||H x - theta x|| = beta_k |y_k|`` (``beta_k`` the norm of the next Lanczos vector before
    normalisation, ``y_k`` the last component of ``y``). Unlike the change of the estimate
    between two steps, it is small only when ``x`` is an eigenvector to that accuracy.
    """
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    # A residual this small relative to the projected spectrum means the Krylov space is
    # invariant: the next vector would be rounding noise.
    breakdown = 100 * torch.finfo(q.dtype).eps
    for k in range(1, max_iters + 1):
        w = hvp(basis[-1], k)
        alpha = float(torch.dot(w, basis[-1]))
        if not (math.isfinite(alpha) and bool(torch.isfinite(w).all())):
            log.warning("Hessian probe: non-finite Hessian-vector product at iteration %d", k)
            return RitzPair(math.nan, k, False, math.nan, None)
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
        residual = 0.0 if scale == 0.0 else beta * abs(coeffs[-1]) / abs(value)
        converged = invariant or (tol > 0 and k >= min_steps and residual <= tol)
        if converged or k == max_iters:
            return RitzPair(value, k, converged, residual, _combine(basis, coeffs))
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
