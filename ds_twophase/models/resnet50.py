"""ResNet-50 for ImageNet with the last BN gamma of every residual block initialised to zero.

Paper Appendix A.2 (after Goyal et al. 2017): each block then starts as the identity, which makes
large-batch training with warmup stable. Built by torchvision with random weights (nothing is
downloaded).
"""

from __future__ import annotations

from torch import nn

__all__ = ["resnet50"]


def resnet50(
    num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = True
) -> nn.Module:
    """torchvision ResNet-50 (25.6M parameters for 1000 classes, 23.5M for 10), random weights.

    Args:
        num_classes: size of the classifier output.
        in_channels: channels of the input images (the stem convolution is replaced if not 3).
        zero_init_residual: zero the last BN gamma of each bottleneck block.
    """
    import torchvision  # only for this model

    model = torchvision.models.resnet50(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
