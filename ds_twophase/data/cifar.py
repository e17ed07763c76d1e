"""CIFAR-10 and CIFAR-100 from a local root in the official python-pickle format.

Expected layout (what the official tarballs unpack to; nothing is ever downloaded):

- CIFAR-10: ``<root>/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``
- CIFAR-100: ``<root>/cifar-100-python/train`` and ``test``

The batch files are read directly instead of through ``torchvision.datasets.CIFAR10``: torchvision
checks md5 sums (so subsets or re-packed files are refused) and decodes every item through PIL,
which is slow on few cores; here the whole split lives in one uint8 tensor.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError
from .image_tensor import ImageTensorDataset, channel_stats, take_sizes
from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["CIFAR_LAYOUTS", "build_cifar10", "build_cifar100", "missing_cifar_files"]

# name -> (folder, train files, test files, label key, number of classes)
CIFAR_LAYOUTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str, int]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}


def missing_cifar_files(name: str, root: str | Path) -> list[Path]:
    """The batch files of dataset ``name`` that are missing under ``root``."""
    folder, train_files, test_files, _, _ = CIFAR_LAYOUTS[name]
    base = Path(root).expanduser() / folder
    return [base / f for f in train_files + test_files if not (base / f).is_file()]


def _read_batches(
    base: Path, files: tuple[str, ...], label_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        with open(base / name, "rb") as f:
            # The official files are python-2 pickles; latin1 is how torchvision reads them too.
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _build(name: str, cfg: DatasetConfig) -> DatasetSplits:
    folder, train_files, test_files, label_key, num_classes = CIFAR_LAYOUTS[name]
    missing = missing_cifar_files(name, cfg.data_root())
    if missing:
        raise ConfigError(
            f"trainer.dataset.root: {name} file '{missing[0]}' is missing; unpack the official "
            f"python-version archive so that '{folder}/' lies directly under trainer.dataset.root"
        )
    base = cfg.data_root() / folder
    x_train, y_train = _read_batches(base, train_files, label_key)
    x_test, y_test = _read_batches(base, test_files, label_key)
    (x_train, y_train), (x_test, y_test) = take_sizes(
        cfg, name, (x_train, y_train), (x_test, y_test)
    )
    if cfg.normalize:
        mean, std = channel_stats(x_train)
    else:
        mean, std = torch.zeros(3), torch.ones(3)
    augment = cfg.resolved_augment()
    return DatasetSplits(
        train=ImageTensorDataset(x_train, y_train, mean, std, augment=augment),
        val=ImageTensorDataset(x_test, y_test, mean, std, augment=False),
        num_classes=num_classes,
        input_shape=(3, 32, 32),
        # Held-out validation samples (trainer.dataset.val_size) are evaluated unaugmented.
        train_eval=ImageTensorDataset(x_train, y_train, mean, std) if augment else None,
    )


def build_cifar10(cfg: DatasetConfig) -> DatasetSplits:
    """CIFAR-10: 50,000 train / 10,000 test images, per-channel standardised, crop+flip when training."""
    return _build("cifar10", cfg)


def build_cifar100(cfg: DatasetConfig) -> DatasetSplits:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test images, preprocessed like CIFAR-10."""
    return _build("cifar100", cfg)
