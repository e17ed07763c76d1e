"""The probe's standard errors: of hmax, from per-sample Rayleigh quotients along the Ritz vector,
and of the probe-batch loss, from the per-sample losses of the same forward pass.

Why this estimator: for a simple top eigenvalue, first-order perturbation theory gives
``d lambda = x^T (dH) x`` (``x`` its unit eigenvector). The probed Hessian is the mean of the
per-sample Hessians, ``H = mean_i H_i``, so with ``x`` held at the Ritz vector hmax is, to first
order, the sample mean of ``q_i = x^T H_i x`` (its mean equals the Ritz value ``x^T H x`` up to
the Lanczos residual). Drawing another probe batch of the same size moves hmax by the sampling
error of that mean: ``se = std(q) / sqrt(n)``. The estimate costs one pass over the probe batch
(a forward with nested forward-mode derivatives along ``x``: ``q_i`` is the second derivative of
sample i's loss along ``x``), no extra HVPs, and uses every sample once (a split-half estimate
would need a second eigen-solve and rests on one difference). With ``bn_mode: "train"`` the
samples of a micro-batch share batch statistics, so the ``q_i`` are not independent and the
standard error is an approximation (their mean is still hmax's Rayleigh quotient).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import jvp

from ds_twophase.analysis.stats import standard_error_from_sums
from ds_twophase.probe.functional import Functional


@dataclasses.dataclass
class SampleSums:
    """Sums over a probe batch's samples (float64): what ranks add up before the statistics."""

    count: float = 0.0
    q: float = 0.0
    q2: float = 0.0
    loss: float = 0.0
    loss2: float = 0.0

    def vector(self) -> torch.Tensor:
        """The four sums as a float64 vector (the count travels beside it)."""
        return torch.tensor([self.q, self.q2, self.loss, self.loss2], dtype=torch.float64)

    @classmethod
    def from_vector(cls, vec: torch.Tensor, count: float) -> SampleSums:
        """The inverse of :meth:`vector` for a summed vector and count."""
        q, q2, loss, loss2 = (float(v) for v in vec.to("cpu", torch.float64))
        return cls(count, q, q2, loss, loss2)

    def stats(self) -> tuple[float, float, float]:
        """``(hmax_se, loss, loss_se)``; ``nan`` where fewer than two samples leave a standard
        error undefined."""
        n = self.count
        if n <= 0:
            return math.nan, math.nan, math.nan
        loss = self.loss / n
        return (
            standard_error_from_sums(self.q, self.q2, n),
            loss,
            standard_error_from_sums(self.loss, self.loss2, n),
        )


def sample_sums(fn: Functional, batches: list[tuple[Any, Any]], x: torch.Tensor) -> SampleSums:
    """This process's sums of per-sample losses and Rayleigh quotients ``x^T H_i x`` along the
    unit vector ``x`` (flat, the probed block's size) over ``batches``, at the probe's weights
    and in its BatchNorm mode (the caller sets the modes, as for the HVPs)."""
    direction = fn.unflat(x.to(fn.device, fn.dtype))
    out = SampleSums()
    zero = torch.zeros((), dtype=fn.dtype, device=fn.device)
    one = torch.ones((), dtype=fn.dtype, device=fn.device)
    for inputs, targets in batches:

        def losses(t: torch.Tensor, inputs: Any = inputs, targets: Any = targets) -> torch.Tensor:
            moved = [v + t * d for v, d in zip(fn.layer_values, direction, strict=True)]
            return fn.sample_losses(inputs, targets, moved)

        def with_slope(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            value, slope = jvp(losses, (t,), (one,))[:2]
            return value, slope

        with torch.no_grad(), _running_stats_untouched(fn.model):
            primal, tangent = jvp(with_slope, (zero,), (one,))[:2]
        loss, curvature = primal[0], tangent[1]
        loss, curvature = loss.double(), curvature.double()
        out.count += loss.numel()
        out.q += float(curvature.sum())
        out.q2 += float((curvature * curvature).sum())
        out.loss += float(loss.sum())
        out.loss2 += float((loss * loss).sum())
    return out


@contextlib.contextmanager
def _running_stats_untouched(model: nn.Module) -> Iterator[None]:
    """BatchNorm in train mode (``bn_mode: "train"``) without its running-stat updates: the
    forward-mode transform refuses in-place writes to buffers, and the output (batch
    statistics) is the same either way."""
    changed = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    try:
        for m in changed:
            m.track_running_stats = False
        yield
    finally:
        for m in changed:
            m.track_running_stats = True
