"""The probe's standard errors: of hmax, from per-sample Rayleigh quotients along the Ritz vector,
and of the probe-batch loss, from the per-sample losses of the same forward pass.

Why this estimator: for a simple top eigenvalue, first-order perturbation theory gives
``d lambda = x^T (dH) x`` (``x`` its unit eigenvector). The probed Hessian is the mean of the
per-sample Hessians, ``H = mean_i H_i``, so with ``x`` held at the Ritz vector hmax is, to first
order, the sample mean of ``q_i = x^T H_i x`` (its mean equals the Ritz value ``x^T H x`` up to
the Lanczos residual). Drawing another probe batch of the same size moves hmax by the sampling
error of that mean: ``se = std(q) / sqrt(n)``. The estimate costs one pass over the probe batch
(a forward and three backward passes through the probed layer's tail, see :func:`_quotients`),
no eigen-solve, and uses every sample once (a split-half estimate
would need a second eigen-solve and rests on one difference). With ``bn_mode: "train"`` the
samples of a micro-batch share batch statistics, so the ``q_i`` are not independent and the
standard error is an approximation (their mean is still hmax's Rayleigh quotient).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

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
        error undefined, or where a process could not compute its sums (``nan`` sums)."""
        n = self.count
        if not n > 0:
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
    and in its BatchNorm mode (the caller sets the modes and enables grad, as for the HVPs)."""
    direction = fn.unflat(x.to(fn.device, fn.dtype))
    out = SampleSums()
    for inputs, targets in batches:
        loss, curvature = _quotients(fn, inputs, targets, direction)
        loss, curvature = loss.double(), curvature.double()
        out.count += loss.numel()
        out.q += float(curvature.sum())
        out.q2 += float((curvature * curvature).sum())
        out.loss += float(loss.sum())
        out.loss2 += float((loss * loss).sum())
    return out


def _quotients(
    fn: Functional, inputs: Any, targets: Any, direction: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses and ``q_i = x^T H_i x`` of one micro-batch, in reverse mode only: with
    ``psi(theta, u) = sum_i u_i loss_i``, ``x^T (d2 psi / d theta2) x = sum_i u_i q_i`` is linear
    in ``u``, so its gradient in ``u`` is ``q``. Three backward passes through the layer's tail
    (the layer's parameters and ``u`` are the only leaves); nested forward mode gave the same
    values to float rounding at about twice the time on the MNIST-1D CNN."""
    leaves = fn.leaves(fn.layer_values)
    losses = fn.sample_losses(inputs, targets, leaves)
    u = torch.ones_like(losses, requires_grad=True)
    grads = torch.autograd.grad((losses * u).sum(), leaves, create_graph=True)
    slope = _dot(grads, direction)
    hvp = torch.autograd.grad(slope, leaves, create_graph=True)
    (curvature,) = torch.autograd.grad(_dot(hvp, direction), u)
    return losses.detach(), curvature


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()
