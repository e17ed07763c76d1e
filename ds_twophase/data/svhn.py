"""SVHN (cropped digits) from a local root in the official ``.mat`` format.

Expected files (what ufldl.stanford.edu/housenumbers serves; nothing is ever downloaded):
``<root>/train_32x32.mat``, ``<root>/test_32x32.mat`` and, for ``extra``, ``<root>/extra_32x32.mat``.
As in the paper (Appendix A.2) the training split is train + extra (604,388 images) and the
test split validates.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError
from .image_tensor import ImageTensorDataset, channel_stats, take_sizes
from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["build_svhn", "missing_svhn_files", "svhn_files"]


def svhn_files(extra: bool) -> tuple[list[str], list[str]]:
    """Training and test file names."""
    return (["train_32x32.mat", "extra_32x32.mat"] if extra else ["train_32x32.mat"]), [
        "test_32x32.mat"
    ]


def missing_svhn_files(root: str | Path, extra: bool) -> list[Path]:
    """The ``.mat`` files that are missing under ``root``."""
    train, test = svhn_files(extra)
    base = Path(root).expanduser()
    return [base / f for f in train + test if not (base / f).is_file()]


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat  # scipy comes with mnist1d; only needed here

    mat = loadmat(path)
    # X is (32, 32, 3, N); labels are 1..10 with 10 standing for the digit 0.
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
    labels = mat["y"].astype(np.int64).reshape(-1) % 10
    return torch.from_numpy(images), torch.from_numpy(labels)


def build_svhn(cfg: DatasetConfig) -> DatasetSplits:
    """SVHN train (+ extra) / test, per-channel standardised, no augmentation."""
    extra = cfg.resolved_extra()
    missing = missing_svhn_files(cfg.data_root(), extra)
    if missing:
        raise ConfigError(f"trainer.dataset.root: svhn file '{missing[0]}' is missing")
    base = cfg.data_root()
    train_files, test_files = svhn_files(extra)
    parts = [_read(base / f) for f in train_files]
    x_train = torch.cat([p[0] for p in parts])
    y_train = torch.cat([p[1] for p in parts])
    x_test, y_test = _read(base / test_files[0])
    (x_train, y_train), (x_test, y_test) = take_sizes(
        cfg, "svhn", (x_train, y_train), (x_test, y_test)
    )
    mean, std = channel_stats(x_train) if cfg.normalize else (torch.zeros(3), torch.ones(3))
    return DatasetSplits(
        train=ImageTensorDataset(x_train, y_train, mean, std),
        val=ImageTensorDataset(x_test, y_test, mean, std),
        num_classes=10,
        input_shape=(3, 32, 32),
    )
