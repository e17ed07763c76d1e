"""Settings of the Hessian probe (the scheduler's ``params.probe`` JSON object)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ds_twophase.errors import ConfigError, check_number, unknown_keys

MODES = ("rank0", "sharded")
METHODS = ("exact", "finite_difference")
BN_MODES = ("eval", "train")
DEFAULT_MAX_GRAPH_BYTES = 2 * 1024**3


@dataclasses.dataclass
class ProbeConfig:
    """Settings of the Hessian probe (JSON: the scheduler's ``params.probe`` object).

    Construct with ``ProbeConfig(**d)`` or ``ProbeConfig.from_dict(d)``; invalid values raise a
    one-line :class:`ConfigError` (a ``ValueError``) keyed by the field, with the allowed values.
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

    max_failures: int = 3
    """Consecutive failed probes at a pending phase switch after which the schedule switches to
    the convergence phase anyway (a loud warning; LR decays compare from the next successful
    probe on), so a probe that keeps failing cannot hold the run at its peak LR."""

    every: int | None = None
    """Also measure hmax for analysis at the end of epochs N, 2N, ... with any scheduler
    (TwoPhaseLR: on those of them where the schedule does not probe anyway). It never feeds a
    decision: a separate probe with its own warm start (:mod:`ds_twophase.probe.every`).
    ``None``: hmax only when the schedule needs it."""

    def __post_init__(self) -> None:
        layer_names(self.layer)
        _check_choice("mode", self.mode, MODES)
        _check_choice("method", self.method, METHODS)
        _check_choice("bn_mode", self.bn_mode, BN_MODES)
        for name in ("batch_size", "micro_batch_size"):
            check_number(name, getattr(self, name), low=1, integer=True, optional=True)
        check_number("max_iters", self.max_iters, low=1, integer=True)
        check_number("max_failures", self.max_failures, low=1, integer=True)
        check_number("every", self.every, low=1, integer=True, optional=True)
        check_number("seed", self.seed, low=0, integer=True, optional=True)
        check_number("tol", self.tol, low=0)
        for name in ("redraw", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    key=name, problem=f"must be true or false, got {getattr(self, name)!r}"
                )
        check_number("max_graph_mb", self.max_graph_mb, low=0, optional=True)
        if isinstance(self.layer, tuple):
            self.layer = list(self.layer)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeConfig:
        """Build from a JSON object; unknown keys raise one :class:`ConfigError` (a
        ``ValueError``) line each, with a hint."""
        if not isinstance(d, dict):
            raise ValueError(f"probe must be a JSON object, got {type(d).__name__}")
        unknown = unknown_keys(d, [f.name for f in dataclasses.fields(cls)])
        if unknown:
            raise ConfigError(unknown)
        return cls(**d)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ConfigError(key=name, problem=f"must be {choices}, got {value!r}")


def layer_names(layer: Any) -> list[str]:
    """The module names ``layer`` (``"auto"`` aside) asks for, or :class:`ConfigError` keyed
    ``layer`` when it is not a module name or a non-empty list of them: the one form check
    (the settings check it at construction, :func:`~ds_twophase.probe.resolve_layer` before
    looking the names up in a model)."""
    ok = (isinstance(layer, str) and layer) or (
        isinstance(layer, (list, tuple))
        and layer
        and all(isinstance(n, str) and n and n != "auto" for n in layer)
    )
    if not ok:
        raise ConfigError(
            key="layer",
            problem='must be "auto", a module name or a non-empty list of module names, '
            f"got {layer!r}",
        )
    return [layer] if isinstance(layer, str) else list(layer)
