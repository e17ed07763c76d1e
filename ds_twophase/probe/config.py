"""Settings of the Hessian probe (the scheduler's ``params.probe`` JSON object)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ds_twophase.errors import did_you_mean

MODES = ("rank0", "sharded")
METHODS = ("exact", "finite_difference")
BN_MODES = ("eval", "train")
DEFAULT_MAX_GRAPH_BYTES = 2 * 1024**3


@dataclasses.dataclass
class ProbeConfig:
    """Settings of the Hessian probe (JSON: the scheduler's ``params.probe`` object).

    Construct with ``ProbeConfig(**d)`` or ``ProbeConfig.from_dict(d)``; invalid values raise a
    one-line ``ValueError`` naming the field (``probe.<field>``) and the allowed values.
    """

    layer: str | list[str] = "auto"
    """``"auto"`` (largest of the last three parametric layers), a module name, or a list of
    module names whose parameters form the probed Hessian block."""
    mode: str = "rank0"
    """``"rank0"`` (rank 0 probes, result broadcast) or ``"sharded"`` (probe batch split over
    ranks, HVPs all-reduced)."""
    batch_size: int | None = None
    """Samples in the probe batch; ``None`` = the global train batch size (the caller fills it)."""
    micro_batch_size: int | None = None
    """Samples per forward pass of the probe; ``None`` = DeepSpeed's
    ``train_micro_batch_size_per_gpu`` (the caller fills it)."""
    max_iters: int = 20
    """Most Lanczos steps (Hessian-vector products) per probe."""
    tol: float = 1e-3
    """Stop (after at least 3 steps) when the relative Ritz residual ``||H v - h v|| / |h|`` of
    the estimate ``h`` and its unit vector ``v`` is at most this (0 = always max_iters)."""
    method: str = "exact"
    """``"exact"`` (double backward) or ``"finite_difference"`` (the paper's Eq. 8)."""
    bn_mode: str = "eval"
    """``"eval"`` (BatchNorm running statistics) or ``"train"`` (batch statistics; refused with
    ``SyncBatchNorm`` in ``"rank0"`` mode, see ``check_probe_model``)."""
    redraw: bool = False
    """Draw new probe samples at every probe instead of one fixed set for the whole run."""
    seed: int | None = None
    """Seed for the probe samples and the start vector; ``None`` = the run's seed."""
    max_graph_mb: float | None = 2048
    """Memory (MiB) for autograd graphs kept between Lanczos steps; micro-batches beyond it
    are recomputed each step. ``None`` = no limit."""
    warm_start: bool = True
    """Start each probe from the eigenvector estimate the previous successful probe ended on
    (kept in checkpoints), mixed with the seeded random vector (``WARM_START_MIX``), instead of
    the seeded random vector alone: fewer HVPs when the model changed little in one epoch.
    ``false`` = every probe starts from the same random vector."""

    def __post_init__(self) -> None:
        _check_layer(self.layer)
        _check_choice("mode", self.mode, MODES)
        _check_choice("method", self.method, METHODS)
        _check_choice("bn_mode", self.bn_mode, BN_MODES)
        for name in ("batch_size", "micro_batch_size"):
            _check_int(name, getattr(self, name), minimum=1, optional=True)
        _check_int("max_iters", self.max_iters, minimum=1)
        _check_int("seed", self.seed, minimum=0, optional=True)
        if not _is_number(self.tol) or not (0 <= self.tol < math.inf):
            raise ValueError(f"probe.tol must be a number >= 0, got {self.tol!r}")
        for name in ("redraw", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"probe.{name} must be true or false, got {getattr(self, name)!r}")
        if self.max_graph_mb is not None and (
            not _is_number(self.max_graph_mb) or not (0 <= self.max_graph_mb < math.inf)
        ):
            raise ValueError(
                f"probe.max_graph_mb must be a number >= 0 or null, got {self.max_graph_mb!r}"
            )
        if isinstance(self.layer, tuple):
            self.layer = list(self.layer)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeConfig:
        """Build from a JSON object; an unknown key raises one ``ValueError`` line with a hint."""
        if not isinstance(d, dict):
            raise ValueError(f"probe must be a JSON object, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(
                    f"probe: unknown key {key!r}{did_you_mean(key, known)}; "
                    f"known keys: {', '.join(known)}"
                )
        return cls(**d)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"probe.{name} must be {choices}, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ValueError(f"probe.{name} must be {what}, got {value!r}")


def _check_layer(layer: Any) -> None:
    ok = (isinstance(layer, str) and layer) or (
        isinstance(layer, (list, tuple))
        and layer
        and all(isinstance(n, str) and n and n != "auto" for n in layer)
    )
    if not ok:
        raise ValueError(
            f'probe.layer must be "auto", a module name or a non-empty list of module names, '
            f"got {layer!r}"
        )
