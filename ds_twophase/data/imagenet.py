"""ImageNet (or any image-classification folder tree) from a local root as ``ImageFolder``s.

Expected layout: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG`` with the same
class folders (the validation images sorted into class folders, as the usual ``valprep.sh`` does).
Nothing is ever downloaded. Images are decoded per item, so the trainer's ``num_workers`` matters.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_imagenet",
    "imagenet_num_classes",
    "imagenet_root_problem",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet training set (RGB, [0, 1] units)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet training set."""


def imagenet_root_problem(root: str | Path) -> str | None:
    """Why ``root`` does not look like an ImageFolder tree (one line), or ``None``."""
    base = Path(root).expanduser()
    for split in ("train", "val"):
        folder = base / split
        if not folder.is_dir():
            return f"'{folder}' is missing; expected {base}/train/<class>/ and {base}/val/<class>/"
        if not any(p.is_dir() for p in folder.iterdir()):
            return f"'{folder}' has no class folders"
    return None


def imagenet_num_classes(root: str | Path) -> int:
    """Number of class folders under ``root/train``."""
    return sum(1 for p in (Path(root).expanduser() / "train").iterdir() if p.is_dir())


def _transforms(train: bool, augment: bool, normalize: bool) -> Any:
    # torchvision is imported only by runs that use it: an MNIST-1D run never loads its ops.
    from torchvision.transforms import v2 as T

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize else ((0.0,) * 3, (1.0,) * 3)
    if train and augment:
        # Paper Appendix A.2 (after He et al. 2019): shorter side resized to 256..384, random
        # 224 crop, flip, brightness, hue (+-0.1), saturation and contrast (0.6..1.4). The paper's
        # additive brightness delta of 32/255 is approximated by a multiplicative 1 +- 0.125.
        head = [
            T.RandomShortestSize(min_size=list(range(256, 385))),
            T.RandomCrop(224),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=32 / 255, contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=0.1),
        ]
    else:
        head = [T.Resize(256), T.CenterCrop(224)]
    return T.Compose(
        [
            T.ToImage(),
            *head,
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )


def _label_tensor(label: int) -> torch.Tensor:
    return torch.tensor(label, dtype=torch.int64)


def build_imagenet(cfg: DatasetConfig) -> DatasetSplits:
    """ImageNet train/val folders with the paper's preprocessing; inputs ``(3, 224, 224)``."""
    problem = imagenet_root_problem(cfg.data_root())
    if problem:
        raise ConfigError(f"trainer.dataset.root: {problem}")
    from torchvision import datasets

    base = cfg.data_root()
    augment = cfg.resolved_augment()
    train = datasets.ImageFolder(
        str(base / "train"),
        transform=_transforms(True, augment, cfg.normalize),
        target_transform=_label_tensor,
    )
    val = datasets.ImageFolder(
        str(base / "val"),
        transform=_transforms(False, False, cfg.normalize),
        target_transform=_label_tensor,
    )
    if val.classes != train.classes:
        raise ConfigError(
            f"trainer.dataset.root: '{base / 'val'}' has {len(val.classes)} class folders, "
            f"'{base / 'train'}' has {len(train.classes)}; they must match"
        )
    # The training images as evaluation sees them, for held-out validation samples
    # (trainer.dataset.val_size): the same file list, the evaluation transform.
    train_eval = None
    if augment and cfg.val_size > 0:
        train_eval = copy.copy(train)
        train_eval.transform = val.transform
    train_size, test_size = cfg.resolved_sizes()
    splits: list[Any] = []
    for key, data, size in (
        ("train_size", train, train_size),
        ("test_size", val, test_size),
        ("train_size", train_eval, train_size),
    ):
        if data is None:
            splits.append(None)
            continue
        if size is not None and size > len(data):
            raise ConfigError(f"trainer.dataset.{key}: {size} is more than the {len(data)} images")
        if size is not None:
            # A strided subset keeps every class represented (files are sorted by class).
            step = len(data) / size
            data = torch.utils.data.Subset(data, [int(i * step) for i in range(size)])
        splits.append(data)
    return DatasetSplits(
        train=splits[0],
        val=splits[1],
        num_classes=len(train.classes),
        input_shape=(3, 224, 224),
        train_eval=splits[2],
    )
