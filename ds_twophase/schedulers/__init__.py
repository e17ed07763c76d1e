"""LR schedulers by name, for the ``"scheduler": {"type": ...}`` section of a DeepSpeed JSON."""

from .base import EpochScheduler
from .two_phase import EpochDecision, EpochRecord, Reading, TwoPhaseDecision, TwoPhaseLR
from .warmup_step import WarmupStepLR

SCHEDULERS: dict[str, type[EpochScheduler]] = {
    "TwoPhaseLR": TwoPhaseLR,
    "WarmupStepLR": WarmupStepLR,
}
"""Scheduler classes ds_twophase builds itself; any other type name is left to DeepSpeed."""

__all__ = [
    "SCHEDULERS",
    "EpochDecision",
    "EpochRecord",
    "EpochScheduler",
    "Reading",
    "TwoPhaseDecision",
    "TwoPhaseLR",
    "WarmupStepLR",
]
