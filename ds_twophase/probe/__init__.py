"""The Hessian probe: hmax, the principal eigenvalue of one layer's Hessian block, per epoch.

Layers, from the bottom: ``config`` (``ProbeConfig``), ``layer`` (which block), ``functional``
(the side-effect-free view of the model), ``hvp`` (Hessian-vector products), ``eigen`` (Lanczos,
``principal_eigenvalue``), ``protocol`` (``measure_hmax`` across ranks: rank0/sharded modes and
their failure protocol), ``hessian`` (``HessianProbe``: the run's probe) and ``every`` (the
analysis probe of ``probe.every``). The probe measures only: the epoch-end decision
(``epoch_end``, ``check_ranks_agree``, ``RankDisagreement``) lives with the schedule in
:mod:`ds_twophase.schedulers.end_of_epoch`; the names below keep importing from here too.
"""

import importlib
from typing import Any

from ds_twophase.probe.config import BN_MODES, METHODS, MODES, ProbeConfig
from ds_twophase.probe.eigen import (
    MIN_STEPS,
    WARM_START_MIX,
    EigenResult,
    RitzPair,
    lanczos,
    principal_eigenvalue,
    start_vector,
)
from ds_twophase.probe.functional import Functional
from ds_twophase.probe.hessian import HessianProbe, reading_of
from ds_twophase.probe.hvp import HessianOperator
from ds_twophase.probe.layer import (
    UnknownLayer,
    parametric_modules,
    preserve_rng_state,
    probe_modes,
    resolve_layer,
)
from ds_twophase.probe.outcome import ProbeOutcome, select_probe_indices
from ds_twophase.probe.protocol import ProbePeerFailure, check_probe_model, measure_hmax

__all__ = [
    "BN_MODES",
    "METHODS",
    "MODES",
    "MIN_STEPS",
    "WARM_START_MIX",
    "EigenResult",
    "Functional",
    "EpochEnd",
    "HessianOperator",
    "HessianProbe",
    "ProbeConfig",
    "ProbeOutcome",
    "ProbePeerFailure",
    "RankDisagreement",
    "RitzPair",
    "UnknownLayer",
    "check_probe_model",
    "check_ranks_agree",
    "epoch_end",
    "lanczos",
    "measure_hmax",
    "parametric_modules",
    "preserve_rng_state",
    "principal_eigenvalue",
    "probe_modes",
    "reading_of",
    "resolve_layer",
    "schedule_digest",
    "select_probe_indices",
    "start_vector",
]

DECISION_NAMES = (
    "EpochEnd",
    "RankDisagreement",
    "check_ranks_agree",
    "epoch_end",
    "schedule_digest",
)
"""The epoch-end decision's names, importable from here as before they moved to the schedule
(loaded on first use: the schedule's module imports the probe)."""


def __getattr__(name: str) -> Any:
    if name in DECISION_NAMES:
        return getattr(importlib.import_module("ds_twophase.schedulers.end_of_epoch"), name)
    raise AttributeError(f"module 'ds_twophase.probe' has no attribute {name!r}")
