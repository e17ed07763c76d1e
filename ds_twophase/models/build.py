"""``build_model``: a model for a dataset, with a clear error when the two do not fit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig
from .registry import MODELS
from .timm_models import build_timm

__all__ = ["build_model"]

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
    too-small image for a ViT.

    Raises:
        ConfigError: the model does not fit the data (message names ``trainer.model.name`` and
            the dataset) or a ``kwargs`` value is invalid.
    """
    shape = tuple(int(d) for d in input_shape)
    if num_classes < 1:
        raise ConfigError(f"trainer.model: num_classes must be >= 1, got {num_classes}")
    data = f"trainer.dataset.name '{dataset_name}'" if dataset_name else "the dataset"
    timm_model = cfg.timm_name
    rank = 2 if timm_model is not None else MODELS[cfg.name].input_rank
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
    try:
        if timm_model is not None:
            model = build_timm(timm_model, num_classes, shape[0], **cfg.kwargs)
        else:
            extra = {"length": shape[1]} if rank == 1 else {}
            model = MODELS[cfg.name].builder(
                num_classes=num_classes, in_channels=shape[0], **extra, **cfg.kwargs
            )
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"trainer.model.kwargs: {cfg.name}: {message}") from None
    if check_forward:
        _check_forward(model, cfg.name, num_classes, shape, data)
    return model


def _check_forward(
    model: nn.Module, name: str, num_classes: int, shape: tuple[int, ...], data: str
) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
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
