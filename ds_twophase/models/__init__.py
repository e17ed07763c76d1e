"""Models by name: CIFAR ResNets, WideResNets, ResNet-50, an MNIST-1D CNN and timm models.

Typical use::

    from ds_twophase.models import ModelConfig, build_model

    model = build_model(ModelConfig(name="resnet20"), num_classes=10, input_shape=(3, 32, 32))
"""

from .build import build_model, check_model
from .config import ModelConfig
from .registry import MODELS, ModelSpec, register_model

__all__ = ["MODELS", "ModelConfig", "ModelSpec", "build_model", "check_model", "register_model"]
