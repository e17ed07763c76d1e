"""A synthetic classification dataset for quick runs: Gaussian noise around class-dependent means."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import TensorDataset

from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["build_synthetic"]

# Per-element distance between class means relative to unit noise: small enough that a single
# pixel says little, large enough (summed over thousands of elements) that models learn quickly.
_SEPARATION = 0.15


def build_synthetic(cfg: DatasetConfig) -> DatasetSplits:
    """Samples ``mean[y] + N(0, 1)`` with class means drawn once from ``cfg.seed``.

    Labels are balanced (``i % num_classes``, then shuffled). Train and validation samples come
    from the same distribution; everything is deterministic given the config.
    """
    train, test = cfg.resolved_sizes()
    shape = tuple(cfg.resolved_shape())
    num_classes = cfg.resolved_num_classes()
    gen = torch.Generator().manual_seed(cfg.seed)
    means = _SEPARATION * torch.randn((num_classes, *shape), generator=gen)

    def split(n: int) -> TensorDataset:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        inputs = means[labels] + torch.randn((n, *shape), generator=gen)
        return TensorDataset(inputs, labels)

    return DatasetSplits(
        train=split(train), val=split(test), num_classes=num_classes, input_shape=shape
    )
