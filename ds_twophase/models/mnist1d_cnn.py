"""A small 1-D CNN for MNIST-1D: the default model of the CPU benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Mnist1dCNN", "mnist1d_cnn"]


class Mnist1dCNN(nn.Module):
    """Conv1d-BN-ReLU stack with a linear head over the flattened features.

    The head sees the flattened feature map, not a global average: MNIST-1D digits differ by where
    their bumps lie along the sequence, and pooling that position away costs accuracy.

    Args:
        num_classes: size of the classifier output.
        in_channels: channels of the input sequence (1 for MNIST-1D).
        length: input sequence length (40 for MNIST-1D).
        widths: output channels of each convolution; the first keeps the length (kernel 5), each
            later one halves it (kernel 3, stride 2).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        length: int = 40,
        widths: tuple[int, ...] | list[int] = (32, 64, 64),
    ):
        super().__init__()
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths: need at least one positive channel count, got {widths}")
        layers: list[nn.Module] = []
        channels, out_len = in_channels, length
        for i, width in enumerate(widths):
            kernel, stride = (5, 1) if i == 0 else (3, 2)
            layers += [
                nn.Conv1d(
                    channels, int(width), kernel, stride=stride, padding=kernel // 2, bias=False
                ),
                nn.BatchNorm1d(int(width)),
                nn.ReLU(inplace=True),
            ]
            channels = int(width)
            out_len = (out_len + 2 * (kernel // 2) - kernel) // stride + 1
        if out_len < 1:
            raise ValueError(f"length: {length} is too short for {len(widths)} convolutions")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)`` for inputs ``(batch, in_channels, length)``."""
        return self.fc(self.features(x).flatten(1))


def mnist1d_cnn(num_classes: int = 10, **kwargs) -> Mnist1dCNN:
    """The default MNIST-1D CNN: 25,322 parameters for 10 classes and length 40."""
    return Mnist1dCNN(num_classes, **kwargs)
