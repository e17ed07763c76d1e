"""``build_model``: a model for a dataset, with a clear error when the two do not fit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, is_int
from .config import ModelConfig
from .registry import MODELS
from .timm_models import build_timm

__all__ = ["build_model", "check_model"]

_RANK_WORDS = {1: "sequences (C, L)", 2: "images (C, H, W)"}


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    dataset_name: str | None = None,
    check_forward: bool = True,
) -> nn.Module:
    """Build the model named by ``cfg`` for ``num_classes`` classes and inputs of ``input_shape``.

    The input channels (and, for 1-D models, the length) come from ``input_shape``, the shape of
    one sample without the batch dimension (``DatasetSplits.input_shape``). With
    ``check_forward`` a zero batch is run through the model in eval mode (no gradients, BN
    statistics untouched, train mode restored) to catch inputs the model cannot take, such as a
    too-small image for a ViT. ``dataset_name`` only improves the error messages.

    Raises:
        ConfigError: the model does not fit the data (message names ``trainer.model.name`` and
            the dataset) or a ``kwargs`` value is invalid.
    """
    shape, data = _check_rank(cfg, num_classes, input_shape, dataset_name)
    model = _instantiate(cfg, num_classes, shape)
    if check_forward:
        _check_forward(model, cfg.name, num_classes, shape, data)
    return model


def check_model(
    cfg: ModelConfig,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    dataset_name: str | None = None,
) -> None:
    """Raise the errors ``build_model`` would, without allocating the model.

    The model is built and run on the ``meta`` device (shapes only, no memory, no compute), so
    config validation can check even a ResNet-50 against the data in well under a second. Where an
    operator has no meta implementation the forward check is skipped; ``build_model`` still
    makes it.

    Raises:
        ConfigError: as ``build_model``.
    """
    shape, data = _check_rank(cfg, num_classes, input_shape, dataset_name)
    with torch.device("meta"):
        model = _instantiate(cfg, num_classes, shape)
    try:
        _check_forward(model, cfg.name, num_classes, shape, data, device="meta")
    except ConfigError as exc:
        if "NotImplementedError" not in str(exc):
            raise


def _check_rank(
    cfg: ModelConfig, num_classes: int, input_shape: Sequence[int], dataset_name: str | None
) -> tuple[tuple[int, ...], str]:
    shape = tuple(int(d) for d in input_shape)
    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(
            f"trainer.model: num_classes must be an integer >= 1, got {num_classes!r}"
        )
    data = f"trainer.dataset.name '{dataset_name}'" if dataset_name else "the dataset"
    rank = 2 if cfg.timm_name is not None else MODELS[cfg.name].input_rank
    if len(shape) != rank + 1:
        got = _RANK_WORDS.get(len(shape) - 1, f"{len(shape) - 1}-D inputs")
        fits = sorted(n for n, s in MODELS.items() if s.input_rank == len(shape) - 1)
        if len(shape) == 3:
            fits.append("timm:<name>")
        fix = f"; models for this data: {', '.join(fits)}" if fits else ""
        raise ConfigError(
            f"trainer.model.name: '{cfg.name}' takes {_RANK_WORDS[rank]} but {data} gives "
            f"{got} of shape {shape}{fix}"
        )
    return shape, data


def _instantiate(cfg: ModelConfig, num_classes: int, shape: tuple[int, ...]) -> nn.Module:
    try:
        if cfg.timm_name is not None:
            return build_timm(cfg.timm_name, num_classes, shape[0], **cfg.kwargs)
        spec = MODELS[cfg.name]
        extra = {"length": shape[1]} if spec.input_rank == 1 else {}
        return spec.builder(num_classes=num_classes, in_channels=shape[0], **extra, **cfg.kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"trainer.model.kwargs: {cfg.name}: {message}") from None


def _check_forward(
    model: nn.Module,
    name: str,
    num_classes: int,
    shape: tuple[int, ...],
    data: str,
    device: str = "cpu",
) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape), device=device))
    except Exception as exc:  # any failure here means the shapes do not fit
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"trainer.model.name: '{name}' cannot take inputs of shape {shape} from "
            f"{data} ({type(exc).__name__}: {message})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"trainer.model.name: '{name}' returns {got} for a batch of 2, not logits "
            f"(2, {num_classes})"
        )
