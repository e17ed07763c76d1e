"""LARS's hyperparameter checks, shared by the optimizer and the JSON config path."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, check_number


def check_hyperparameters(
    *,
    lr: Any,
    momentum: Any,
    weight_decay: Any,
    trust_coefficient: Any,
    eps: Any,
    nesterov: Any,
    clip: Any,
    adapt: Any,
    compile: Any = False,
    where: str = "",
) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) keyed ``where + name`` for the first
    out-of-range hyperparameter (the shared number check)."""
    try:
        check_number("lr", lr, low=0)
        check_number("momentum", momentum, low=0, high=1, high_open=True)
        check_number("weight_decay", weight_decay, low=0)
        check_number("trust_coefficient", trust_coefficient, low=0, low_open=True)
        check_number("eps", eps, low=0)
        flags = (("nesterov", nesterov), ("clip", clip), ("adapt", adapt), ("compile", compile))
        for name, value in flags:
            if not isinstance(value, bool):
                raise ConfigError(key=name, problem=f"expected true or false, got {value!r}")
        if nesterov and momentum == 0:
            raise ConfigError(key="nesterov", problem="Nesterov momentum needs momentum > 0")
    except ConfigError as exc:
        raise exc.under(where) from None
