"""The result of building a dataset (train / validation / test splits) and the validation hold-out."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, replace
from typing import cast

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["DatasetSplits", "hold_out_validation"]


@dataclass
class DatasetSplits:
    """Train, validation and (optionally) test splits of one dataset.

    Each split yields ``(input, label)`` pairs: a float tensor of shape ``input_shape`` and a
    0-dim ``int64`` tensor. Dataset builders return ``train`` and ``val`` (the dataset's test
    split); :func:`hold_out_validation` then moves ``val`` to ``test`` and carves a new ``val``
    out of ``train`` when ``trainer.dataset.val_size`` is above 0.
    """

    train: Dataset
    """Training split (shuffled by the trainer's sampler, not here)."""
    val: Dataset
    """Split measured after every epoch (``val_loss``/``val_accuracy``): the samples held out of
    the training split when ``val_size > 0``, else the test split."""
    num_classes: int
    """Number of classes; labels lie in ``[0, num_classes)``."""
    input_shape: tuple[int, ...]
    """Shape of one input without the batch dimension, e.g. ``(1, 40)`` or ``(3, 32, 32)``."""
    test: Dataset | None = None
    """The test split when it is separate from ``val`` (``val_size > 0``): evaluated once, after
    the last epoch. ``None`` when ``val`` is the test split."""
    train_eval: Dataset | None = None
    """The training samples as evaluation sees them (no augmentation), index-aligned with
    ``train``; set by builders whose training split is augmented, so that held-out validation
    samples are not augmented. ``None``: ``train`` itself has no augmentation."""
    val_indices: list[int] | None = None
    """Indices (into the training split as built) of the held-out validation samples, sorted;
    ``None`` when nothing is held out."""


def _take(dataset: Dataset, indices: list[int]) -> Dataset:
    # Tensor datasets stay tensor datasets (the trainer indexes them a whole batch at a time).
    if isinstance(dataset, TensorDataset):
        index = torch.tensor(indices, dtype=torch.long)
        return TensorDataset(*(t[index].clone() for t in dataset.tensors))
    return Subset(dataset, indices)


def validation_indices(num_train: int, val_size: int, seed: int) -> list[int]:
    """The ``val_size`` training indices held out for validation, sorted: the first ``val_size``
    of a permutation of ``range(num_train)`` seeded by ``seed`` (the dataset's seed, so the split
    is the same for every trainer seed, rank count and resume)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_train, generator=gen)
    return sorted(perm[:val_size].tolist())


def hold_out_validation(splits: DatasetSplits, val_size: int, seed: int) -> DatasetSplits:
    """Move ``val_size`` training samples to a validation split, and the old ``val`` (the test
    split) to ``test``; ``val_size == 0`` returns ``splits`` unchanged.

    Raises:
        ValueError: ``val_size`` leaves no training sample (the message starts with
            ``val_size``).
    """
    if val_size == 0:
        return splits
    n = len(cast(Sized, splits.train))  # every data set here is map-style, with a length
    if val_size >= n:
        raise ValueError(
            f"val_size: {val_size} must be smaller than the {n} training samples; lower it"
        )
    held = validation_indices(n, val_size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    kept = keep.nonzero().squeeze(1).tolist()
    plain = splits.train if splits.train_eval is None else splits.train_eval
    return replace(
        splits,
        train=_take(splits.train, kept),
        val=_take(plain, held),
        test=splits.val,
        train_eval=None if splits.train_eval is None else _take(splits.train_eval, kept),
        val_indices=held,
    )
