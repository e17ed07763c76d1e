"""ds_twophase: the two-phase Hessian-aware learning-rate schedule and LARS for DeepSpeed.

Public API: :func:`initialize` (drop-in for ``deepspeed.initialize``), :func:`save_checkpoint` and
:func:`load_checkpoint` (with the probe's state),
:func:`epoch_end` with :class:`HessianProbe` and :class:`ProbeConfig` (the per-epoch call of your
own loop), :class:`TwoPhaseLR`, :class:`WarmupStepLR`, :class:`LARS`, :func:`lars_param_groups`,
:func:`principal_eigenvalue`, :func:`shutdown` (the end of a script's process group).
Importing the package does not import DeepSpeed; the names that
need it are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError
from .schedulers import TwoPhaseLR, WarmupStepLR

__version__ = "0.1.0"

_LAZY = {
    "initialize": "ds_twophase.engine",
    "load_checkpoint": "ds_twophase.loop_checkpoint",
    "save_checkpoint": "ds_twophase.loop_checkpoint",
    "epoch_end": "ds_twophase.schedulers.end_of_epoch",
    "HessianProbe": "ds_twophase.probe",
    "ProbeConfig": "ds_twophase.probe",
    "principal_eigenvalue": "ds_twophase.probe",
    "LARS": "ds_twophase.optim",
    "lars_param_groups": "ds_twophase.optim",
    "shutdown": "ds_twophase.dist",
}

__all__ = [
    "ConfigError",
    "HessianProbe",
    "LARS",
    "ProbeConfig",
    "TwoPhaseLR",
    "WarmupStepLR",
    "epoch_end",
    "initialize",
    "lars_param_groups",
    "load_checkpoint",
    "principal_eigenvalue",
    "save_checkpoint",
    "shutdown",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ds_twophase' has no attribute {name!r}")
