"""CIFAR ResNets of He et al. 2016 (Section 4.2): ResNet-20/32/44/56/110.

Three stages of ``n`` basic blocks with 16, 32 and 64 channels on 32x32 inputs, depth ``6n + 2``.
The default shortcut is the paper's option A (identity with strided subsampling and zero-padded
channels, no parameters): ResNet-20 has 269,722 parameters for 10 classes. Option B uses a
1x1 convolution + BatchNorm projection where the shape changes (ResNet-20: 272,474).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]

SHORTCUTS = ("A", "B")


class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample spatially and pad channels symmetrically with zeros."""
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward pass."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images with ``depth = 6n + 2`` layers.

    Args:
        depth: total number of weighted layers; must be ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: size of the classifier output.
        in_channels: channels of the input images.
        shortcut: ``"A"`` (parameter-free, the paper's CIFAR choice) or ``"B"`` (1x1 projection).
        zero_init_residual: initialise the last BN gamma of each block to 0 so that every block
            starts as the identity (Goyal et al. 2017); off by default as in He et al. 2016.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth: a CIFAR ResNet needs depth = 6n + 2 (20, 32, ...), got {depth}"
            )
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut: must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20: 269,722 parameters with option A and 10 classes (272,474 with option B)."""
    return CifarResNet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32 (0.46M parameters with option A and 10 classes)."""
    return CifarResNet(32, num_classes, **kwargs)


def resnet44(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-44 (0.66M parameters with option A and 10 classes)."""
    return CifarResNet(44, num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56 (0.85M parameters with option A and 10 classes)."""
    return CifarResNet(56, num_classes, **kwargs)


def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-110 (1.7M parameters with option A and 10 classes)."""
    return CifarResNet(110, num_classes, **kwargs)
