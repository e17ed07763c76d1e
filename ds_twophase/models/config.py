"""``ModelConfig``: the validated ``trainer.model`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, did_you_mean, unknown_keys
from .registry import MODELS
from .timm_models import check_timm_name, timm_name

__all__ = ["ModelConfig"]

# Filled in from the dataset by build_model.
_RESERVED = ("num_classes", "in_channels", "length")


@dataclass
class ModelConfig:
    """Which model to train.

    Errors are :class:`ConfigError` (a ``ValueError``) keyed by the field name, which the config
    loader reports under the section's key (``trainer.model.<field>: ...``).
    """

    name: str = "mnist1d_cnn"
    """A registered model (``mnist1d_cnn``, ``resnet20``/``32``/``44``/``56``/``110``,
    ``wrn_28_10``, ``wrn_16_8``, ``wide_resnet``, ``resnet50``) or ``timm:<name>`` /
    ``timm.<name>`` for any timm model (random weights)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Options passed to the model's builder, e.g. ``{"dropout": 0.5}`` for a WideResNet. The
    number of classes and the input channels come from the dataset and may not be set here."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(key="name", problem=f"must be a string, got {self.name!r}")
        if not isinstance(self.kwargs, dict):
            raise ConfigError(key="kwargs", problem=f"must be an object, got {self.kwargs!r}")
        timm_model = timm_name(self.name)
        if timm_model is not None:
            check_timm_name(timm_model, self.kwargs)
            return
        if self.name not in MODELS:
            hint = did_you_mean(self.name, MODELS)
            raise ConfigError(
                key="name",
                problem=f"unknown model '{self.name}'{hint}; choose one of "
                f"{', '.join(sorted(MODELS))}, or 'timm:<name>' for any timm model",
            )
        options = MODELS[self.name].options
        for key in self.kwargs:
            if key in _RESERVED:
                raise ConfigError(
                    key="kwargs", problem=f"'{key}' is set from the dataset; remove it"
                )
        unknown = unknown_keys(self.kwargs, options, owner=f"model '{self.name}'")
        if unknown:
            raise ConfigError([u.under("kwargs.") for u in unknown])

    @property
    def timm_name(self) -> str | None:
        """The timm model name when ``name`` is ``timm:<name>``, else ``None``."""
        return timm_name(self.name)
