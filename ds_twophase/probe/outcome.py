"""What a probe returns (:class:`ProbeOutcome`) and which samples it probes
(:func:`select_probe_indices`): the records the protocol, the probe and the schedule share."""

from __future__ import annotations

import dataclasses
import math

import torch

from ds_twophase.errors import check_number


def select_probe_indices(num_samples: int, size: int, seed: int, draw: int = 0) -> list[int]:
    """``min(size, num_samples)`` distinct sample indices, sorted, chosen from ``seed``.

    The same arguments always give the same indices (fixed probe batch); ``redraw`` mode passes
    a different ``draw`` (e.g. the probe count) to get a different set each time.
    """
    check_number("num_samples", num_samples, low=1, integer=True)
    check_number("size", size, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    check_number("draw", draw, low=0, integer=True)
    # A private generator keyed by (seed, draw): independent of the global RNG streams.
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(draw))  # 2.0 passes as 2
    chosen = torch.randperm(int(num_samples), generator=gen)[: min(int(size), int(num_samples))]
    return sorted(chosen.tolist())


@dataclasses.dataclass
class ProbeOutcome:
    """What every rank gets back from ``measure_hmax`` (identical on all ranks)."""

    value: float
    """hmax, or ``nan`` when the probe failed or its estimate was not finite."""
    seconds: float
    """Wall time of the probe (the slowest rank in sharded mode)."""
    error: str | None
    """``None`` when ``value`` is usable; otherwise one line per failing rank, ``; ``-joined."""
    layer: list[str] | None
    """Module name(s) probed (``None`` if the probe failed before choosing them)."""
    iterations: int
    """Lanczos steps (HVPs) performed."""
    num_samples: int = 0
    """Samples in the probe batch."""
    residual: float = math.nan
    """Relative Ritz residual of ``value`` (see ``EigenResult.residual``); ``nan`` on failure."""
    hmax_se: float = math.nan
    """Standard error of ``value`` (see ``EigenResult.hmax_se``); ``nan`` when unknown."""
    loss: float = math.nan
    """Mean loss on the probe batch at the probe's weights, from the probe's forward pass."""
    loss_se: float = math.nan
    """Standard error of ``loss`` from the per-sample losses."""
    vector: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)
    """The final eigenvector estimate, on the ranks that computed it (rank 0 in "rank0" mode,
    every rank in "sharded" mode, where it is the same everywhere); ``None`` elsewhere and when
    the probe failed. Never sent between ranks; the one field that is not the same on all."""

    @property
    def ok(self) -> bool:
        """True when ``value`` is a finite eigenvalue estimate."""
        return self.error is None
