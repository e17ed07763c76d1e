"""ds_twophase: the two-phase Hessian-aware learning-rate schedule and LARS for DeepSpeed."""

__version__ = "0.1.0"
