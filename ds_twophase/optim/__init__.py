"""Optimizers: LARS/LARC, its parameter groups, and the registry the JSON config path uses."""

from .factory import (
    GROUP_OPTIONS,
    OPTIMIZERS,
    OptimizerFactory,
    build_optimizer_factory,
    check_zero_compatible,
    find_optimizer,
)
from .lars import LARS, kernel_available
from .param_groups import lars_param_groups, split_param_groups

__all__ = [
    "GROUP_OPTIONS",
    "LARS",
    "OPTIMIZERS",
    "OptimizerFactory",
    "build_optimizer_factory",
    "check_zero_compatible",
    "find_optimizer",
    "kernel_available",
    "lars_param_groups",
    "split_param_groups",
]
