"""A synthetic classification dataset for quick runs: Gaussian noise around class-dependent means."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["build_synthetic"]

# Class means are coarse patterns (at most 4x4 blocks for images, 8 segments for sequences) of
# this amplitude, under unit noise: no single element gives the label away, but pooling over a
# block does, so small CNNs learn the task within a few epochs.
_AMPLITUDE = 0.3
_PATTERN_RES = {1: 8, 2: 4}


def build_synthetic(cfg: DatasetConfig) -> DatasetSplits:
    """Samples ``mean[y] + N(0, 1)`` with class means drawn once from ``cfg.seed``.

    Labels are balanced (``i % num_classes``, then shuffled). Train and validation samples come
    from the same distribution; everything is deterministic given the config.
    """
    train, test = cfg.generated_sizes()
    shape = tuple(cfg.resolved_shape())
    num_classes = cfg.resolved_num_classes()
    spatial = shape[1:]
    coarse = [min(_PATTERN_RES[len(spatial)], s) for s in spatial]
    gen = torch.Generator().manual_seed(cfg.seed)
    means = _AMPLITUDE * torch.randn((num_classes, shape[0], *coarse), generator=gen)
    means = F.interpolate(means, size=spatial, mode="nearest")

    def split(n: int) -> TensorDataset:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        inputs = means[labels] + torch.randn((n, *shape), generator=gen)
        return TensorDataset(inputs, labels)

    return DatasetSplits(
        train=split(train), val=split(test), num_classes=num_classes, input_shape=shape
    )
