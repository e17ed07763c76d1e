"""A tensor-backed image dataset: uint8 images in memory, normalised (and augmented) per item."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["ImageTensorDataset", "channel_stats"]


def take_sizes(
    cfg: Any,
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Keep the first ``train_size``/``test_size`` samples of each split (``None``: all); asking
    for more than the files hold is a ConfigError naming the key."""
    out = []
    for key, size, (x, y) in zip(
        ("train_size", "test_size"), cfg.resolved_sizes(), (train, test), strict=True
    ):
        if size is not None and size > len(y):
            raise ConfigError(
                f"trainer.dataset.{key}: {size} is more than the {len(y)} samples of {name}"
            )
        out.append((x, y) if size is None else (x[:size], y[:size]))
    return out[0], out[1]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 images ``(N, C, H, W)``, in [0, 1] units."""
    c = images.shape[1]
    sums = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    # Chunked so that 50k+ images never need a full float copy in memory.
    for chunk in images.split(4096):
        x = chunk.to(torch.float64) / 255.0
        sums += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = sums / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


class ImageTensorDataset(Dataset):
    """``(image, label)`` pairs from uint8 tensors.

    Images stay uint8 in memory (4x smaller than float) and are converted per item:
    ``(x / 255 - mean) / std``. With ``augment``, training images are randomly cropped from a
    zero-padded copy (padding ``pad`` pixels) and flipped horizontally with probability 0.5, the
    standard CIFAR augmentation; the randomness comes from torch's global generator, which the
    DataLoader seeds per worker.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        labels: int64 tensor ``(N,)``.
        mean: per-channel mean in [0, 1] units, shape ``(C,)``.
        std: per-channel standard deviation in [0, 1] units, shape ``(C,)``.
        augment: apply random crop and horizontal flip.
        pad: zero padding for the random crop.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool = False,
        pad: int = 4,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = mean.reshape(-1, 1, 1).float()
        self.std = std.reshape(-1, 1, 1).float()
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        """Number of samples."""
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised (and, when training, augmented) image and its label."""
        img = self.images[index]
        if self.augment:
            h, w = img.shape[1:]
            p = self.pad
            if p > 0:
                top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
                img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
        x = (img.float() / 255.0 - self.mean) / self.std
        return x, self.labels[index]
