"""LARS/LARC (``LARS``): the optimizer, its update math, the fused C++ kernel and its step on a
ZeRO-1/2 partition.

Modules: ``optimizer`` (:class:`LARS`), ``hyperparameters`` (:func:`check_hyperparameters`),
``update`` (the PyTorch update: buckets, multi-tensor and per-tensor paths), ``kernel`` (the
fused CPU kernel, ``kernel.cpp``, built on first use), ``zero`` (trust ratios of whole parameters
on a flat partition). Logs go to the ``ds_twophase.optim.lars`` logger.
"""

from .hyperparameters import check_hyperparameters
from .kernel import kernel_available
from .optimizer import LARS

__all__ = ["LARS", "check_hyperparameters", "kernel_available"]
