"""Datasets by name: MNIST-1D (generated locally), synthetic data, CIFAR-10/100, SVHN, ImageNet.

Typical use::

    from ds_twophase.data import DatasetConfig, build_datasets

    splits = build_datasets(DatasetConfig(name="mnist1d", train_size=4000))
    splits.train[0]  # (tensor of shape (1, 40), tensor(label))
"""

from .config import DatasetConfig
from .registry import (
    DATASETS,
    DatasetSpec,
    build_datasets,
    describe_dataset,
    register_dataset,
)
from .splits import DatasetSplits

__all__ = [
    "DATASETS",
    "DatasetConfig",
    "DatasetSpec",
    "DatasetSplits",
    "build_datasets",
    "describe_dataset",
    "register_dataset",
]
