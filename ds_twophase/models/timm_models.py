"""Any timm model by name (``timm:<name>`` or ``timm.<name>``), always with random weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, did_you_mean

__all__ = ["TIMM_PREFIXES", "build_timm", "check_timm_name", "timm_name"]

TIMM_PREFIXES = ("timm:", "timm.")
# Filled in by the caller from the dataset; a config that sets them would be overridden silently.
_RESERVED = ("num_classes", "in_chans")


def timm_name(name: str) -> str | None:
    """The timm model name inside ``name``, or ``None`` when it is not a timm reference."""
    for prefix in TIMM_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def check_timm_name(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` (starting with the field name) for an unknown model or bad kwargs."""
    import timm  # slow to import: only when a timm model is asked for

    if not timm.is_model(name):
        hint = did_you_mean(name, timm.list_models())
        raise ConfigError(
            key="name",
            problem=f"timm has no model '{name}'{hint}; see timm.list_models() for the names",
        )
    if kwargs.get("pretrained"):
        raise ConfigError(
            key="kwargs",
            problem="pretrained weights cannot be used (nothing is downloaded); remove "
            "'pretrained' or set it to false, or load a local file with 'checkpoint_path'",
        )
    for key in _RESERVED:
        if key in kwargs:
            raise ConfigError(key="kwargs", problem=f"'{key}' is set from the dataset; remove it")


def build_timm(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=..., **kwargs)``."""
    import timm

    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
