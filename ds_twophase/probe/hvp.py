"""Hessian-vector products of one layer's block over the probe batch (two engines).

Design choices (the why):

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
  Peak memory is the budget plus one micro-batch's graph. The probe batch itself stays on the
  host: each micro-batch is moved to the device when its forward runs (``Functional.loss``), so
  the device holds one micro-batch's inputs at a time (plus those a kept graph saved, which
  are counted in its bytes).
* **Finite differences (paper Eq. 8).** ``Hv ~= (grad F(w + r v) - grad F(w)) / r`` restricted to
  the layer, with ``v`` of unit norm and ``r = sqrt(eps) * (1 + ||w||)`` (``eps`` the machine
  epsilon of the compute dtype), the usual step for forward-difference Jacobian-vector products
  (it balances truncation error ~ r against rounding error ~ eps/r). ``grad F(w)`` is computed
  once; each iteration needs one forward over the probe batch and a backward through the tail,
  so this method costs far more than the exact one and is less accurate.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ds_twophase.probe.functional import Functional, SavedBytes, samples_in, storage_ptr

log = logging.getLogger("ds_twophase.probe")

# ----------------------------------------------------------------------------------------------
# HVP engines: each returns the local sample-weighted sum  sum_i n_i * H_i v  as a flat vector


class ExactHVP:
    """Double-backward HVPs through graphs kept from one forward per micro-batch."""

    def __init__(
        self, fn: Functional, batches: list[tuple[Any, Any]], v0: torch.Tensor, budget: int | None
    ):
        self.fn = fn
        self.leaves = fn.leaves(fn.layer_values)
        self.kept: list[torch.Tensor | None] | None = None  # sum of kept micro-batches' g
        self.spilled: list[tuple[Any, Any]] = []
        self.first: torch.Tensor | None = None  # spilled micro-batches' share of H v0
        self.graph_bytes = 0
        for inputs, targets in batches:
            counter = SavedBytes(fn.exclude_ptrs | _input_ptrs(inputs))
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
        n = samples_in(inputs, targets)
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
        if self.pending_first and self.first is not None:
            self.pending_first = False
            return total + self.first
        for inputs, targets in self.spilled:
            total += self._hvp(self._grad_with_graph(inputs, targets), v, retain=False)
        return total


class FiniteDiffHVP:
    """Paper Eq. 8: forward difference of layer gradients, one forward per micro-batch per HVP."""

    def __init__(self, fn: Functional, batches: list[tuple[Any, Any]]):
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
            loss = self.fn.loss(inputs, targets, leaves) * samples_in(inputs, targets)
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
        return {storage_ptr(inputs)}
    if isinstance(inputs, (list, tuple)):
        return set().union(*(_input_ptrs(x) for x in inputs)) if inputs else set()
    if isinstance(inputs, dict):
        return _input_ptrs(list(inputs.values()))
    return set()


class HessianOperator:
    """``H v`` for the Hessian of the mean loss over ``batches`` w.r.t. one layer's parameters.

    The public face of the HVP engines, for code that runs its own iteration on them (e.g. a
    benchmark's power iteration); :func:`ds_twophase.probe.principal_eigenvalue` uses it too.
    Call it inside :func:`ds_twophase.probe.layer.probe_modes` and ``torch.enable_grad()``
    (``principal_eigenvalue`` does). ``operator(v)`` returns the local sample-weighted sum
    ``sum_i n_i H_i v`` over this process's micro-batches; divide by :attr:`num_samples` (or
    the count summed over processes) for the mean. The exact engine is built on the first call,
    with that call's ``v`` (micro-batches over the graph budget use their graph once then).
    """

    def __init__(
        self,
        fn: Functional,
        batches: list[tuple[Any, Any]],
        method: str = "exact",
        max_graph_bytes: int | None = None,
    ):
        self.fn = fn
        self.batches = batches
        self.method = method
        self.max_graph_bytes = max_graph_bytes
        self.num_samples = float(sum(samples_in(x, y) for x, y in batches))
        """Samples in this process's micro-batches."""
        self.engine: ExactHVP | FiniteDiffHVP | None = None

    @property
    def graph_bytes(self) -> int:
        """Bytes of the graphs the exact engine keeps between calls (0 before the first call)."""
        return self.engine.graph_bytes if isinstance(self.engine, ExactHVP) else 0

    @property
    def num_params(self) -> int:
        """Size of the probed block (the length of ``v``)."""
        return self.fn.num_params

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not self.batches:
            return torch.zeros_like(v)
        if self.engine is None:
            self.engine = (
                ExactHVP(self.fn, self.batches, v, self.max_graph_bytes)
                if self.method == "exact"
                else FiniteDiffHVP(self.fn, self.batches)
            )
        return self.engine(v)
