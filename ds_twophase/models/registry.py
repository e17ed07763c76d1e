"""Models by name, the input rank each one takes, and the builder that makes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .cifar_resnet import resnet20, resnet32, resnet44, resnet56, resnet110
from .mnist1d_cnn import mnist1d_cnn
from .resnet50 import resnet50
from .wide_resnet import WideResNet, wrn_16_8, wrn_28_10

__all__ = ["MODELS", "ModelSpec", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named model.

    The builder is called as ``builder(num_classes=..., in_channels=..., **kwargs)``, plus
    ``length=...`` for 1-D models, where ``kwargs`` come from the config and may only use the
    names in ``options``.
    """

    builder: Callable[..., nn.Module]
    """Makes the model."""
    input_rank: int
    """Spatial dimensions of the input: 1 for sequences ``(C, L)``, 2 for images ``(C, H, W)``."""
    options: tuple[str, ...] = ()
    """Config ``kwargs`` this model accepts."""
    description: str = ""
    """One line for docs and error messages."""


MODELS: dict[str, ModelSpec] = {}
"""Available models by name (``timm:<name>`` models are resolved separately)."""


def register_model(name: str, spec: ModelSpec) -> None:
    """Add a model under ``name`` (later registrations replace earlier ones)."""
    if "." in name or ":" in name:
        raise ValueError(f"name: '{name}' may not contain '.' or ':' (reserved for timm names)")
    MODELS[name] = spec


register_model(
    "mnist1d_cnn",
    ModelSpec(mnist1d_cnn, 1, ("widths",), "small Conv1d-BN-ReLU CNN for MNIST-1D (25k params)"),
)
for _name, _fn, _params in (
    ("resnet20", resnet20, "0.27M"),
    ("resnet32", resnet32, "0.46M"),
    ("resnet44", resnet44, "0.66M"),
    ("resnet56", resnet56, "0.85M"),
    ("resnet110", resnet110, "1.7M"),
):
    register_model(
        _name,
        ModelSpec(
            _fn,
            2,
            ("shortcut", "zero_init_residual"),
            f"CIFAR ResNet (He et al. 2016), option A shortcuts, {_params} params",
        ),
    )
register_model(
    "wrn_28_10",
    ModelSpec(wrn_28_10, 2, ("dropout",), "WideResNet-28-10 (36.5M params)"),
)
register_model(
    "wrn_16_8",
    ModelSpec(wrn_16_8, 2, ("dropout",), "WideResNet-16-8 (11.0M params)"),
)
register_model(
    "wide_resnet",
    ModelSpec(
        WideResNet,
        2,
        ("depth", "widen_factor", "dropout"),
        "WideResNet-depth-k of any size (default 28-10)",
    ),
)
register_model(
    "resnet50",
    ModelSpec(
        resnet50,
        2,
        ("zero_init_residual",),
        "torchvision ResNet-50, last BN gamma of each block zero-initialised",
    ),
)
