"""The result of building a dataset: train and validation splits plus what a model needs."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

__all__ = ["DatasetSplits"]


@dataclass
class DatasetSplits:
    """Train and validation splits of one dataset.

    Each split yields ``(input, label)`` pairs: a float tensor of shape ``input_shape`` and a
    0-dim ``int64`` tensor.
    """

    train: Dataset
    """Training split (shuffled by the trainer's sampler, not here)."""
    val: Dataset
    """Held-out split used for validation loss and accuracy (the test set where one exists)."""
    num_classes: int
    """Number of classes; labels lie in ``[0, num_classes)``."""
    input_shape: tuple[int, ...]
    """Shape of one input without the batch dimension, e.g. ``(1, 40)`` or ``(3, 32, 32)``."""
