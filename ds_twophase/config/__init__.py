"""Load a run's JSON config, apply ``--set`` overrides, and validate it before any worker trains.

A run config is a DeepSpeed config in which ``optimizer``/``scheduler`` may name ds_twophase
types (``LARS``, ``TwoPhaseLR``, ``WarmupStepLR``), the probe settings sit under the scheduler's
``params.probe``, and a ``trainer`` section holds what DeepSpeed does not know. Validation
collects every problem as one line naming the key and the fix (:class:`ConfigError`).

Modules: ``run`` (:func:`validate_config`, :class:`RunConfig`), ``batch`` (the batch
arithmetic), ``sections`` (top level, precision, ZeRO), ``optimizer`` and ``schedule`` (the
scheduler, probe and trainer sections).
"""

from __future__ import annotations

from .batch import Batch, resolve_batch
from .run import ComponentSpec, RunConfig, apply_override, load_config, validate_config

__all__ = [
    "Batch",
    "ComponentSpec",
    "RunConfig",
    "apply_override",
    "load_config",
    "resolve_batch",
    "validate_config",
]
