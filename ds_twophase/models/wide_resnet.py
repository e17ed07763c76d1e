"""Wide ResNets of Zagoruyko & Komodakis 2016: WRN-depth-k with pre-activation blocks.

WRN-28-10 (36.5M parameters) is the paper's CIFAR model, WRN-16-8 (11.0M) its SVHN model, trained
there with dropout 0.5 between the two convolutions of each block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideResNet", "wrn_16_8", "wrn_28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward pass."""
        out = F.relu(self.bn1(x))
        # The projection shares the pre-activation, as in the reference implementation.
        residual = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = self.conv2(self.dropout(out))
        return out + residual


class WideResNet(nn.Module):
    """Wide ResNet with ``depth = 6n + 4`` layers and width multiplier ``widen_factor``.

    Args:
        depth: total number of weighted layers; must be ``6n + 4`` (16, 22, 28, 40, ...).
        widen_factor: channel multiplier k (stage widths 16k, 32k, 64k).
        num_classes: size of the classifier output.
        in_channels: channels of the input images.
        dropout: dropout probability between the two convolutions of each block (0 disables).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth: a WideResNet needs depth = 6n + 4 (16, 28, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor: must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = 16
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(WideBasicBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn_28_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-10: 36,479,194 parameters for 10 classes."""
    return WideResNet(28, 10, num_classes, **kwargs)


def wrn_16_8(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-16-8: 10,961,370 parameters for 10 classes."""
    return WideResNet(16, 8, num_classes, **kwargs)
