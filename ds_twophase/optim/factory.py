"""Optimizers named in the JSON config: ``"optimizer": {"type": "LARS", "params": {...}}``.

DeepSpeed has no registry for client optimizers, so ``ds_twophase.initialize`` reads the section
itself and passes ``optimizer=build_optimizer_factory(type, params, model)`` to
``deepspeed.initialize``, which calls the factory with the model parameters. Every check runs
when the factory is built, before any worker trains, and fails with a ``ConfigError`` naming the
key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from ..errors import ConfigError, did_you_mean, unknown_keys
from .lars import LARS, check_hyperparameters
from .param_groups import split_param_groups

__all__ = [
    "GROUP_OPTIONS",
    "OPTIMIZERS",
    "OptimizerFactory",
    "build_optimizer_factory",
    "check_zero_compatible",
    "find_optimizer",
]

#: Optimizer classes the JSON ``optimizer.type`` may name (matched case-insensitively).
OPTIMIZERS: dict[str, type[Optimizer]] = {"LARS": LARS}

#: The range check of each registered optimizer's constructor arguments (defaults filled in),
#: run when its factory is built: one entry per optimizer, no special case in the factory.
ARGUMENT_CHECKS: dict[type[Optimizer], Callable[..., None]] = {
    LARS: partial(check_hyperparameters, adapt=True),  # adapt is a group option, true by default
}

#: ``optimizer.params`` keys that build parameter groups instead of going to the constructor:
#: ``exclude_bias_and_norm`` (bool, default true) and ``exclude`` (list of name patterns).
GROUP_OPTIONS: dict[str, Any] = {"exclude_bias_and_norm": True, "exclude": []}


def find_optimizer(type_name: str) -> type[Optimizer] | None:
    """The registered class for ``type_name`` (case-insensitive), or None for other names.

    None means the name is DeepSpeed's or torch's business (``"Adam"``, ``"SGD"``, ...) and the
    section should be left to ``deepspeed.initialize``.
    """
    for name, cls in OPTIMIZERS.items():
        if name.lower() == str(type_name).lower():
            return cls
    return None


def check_zero_compatible(zero_stage: int, type_name: str = "LARS") -> None:
    """Refuse a layer-wise optimizer under ZeRO stage 3 (raise ``ConfigError``; 0-2 pass).

    Stages 1 and 2 hand the optimizer flat partitions that mix layers; LARS maps them back to
    layers through DeepSpeed's fragment mapping (``zero.py``). Stage 3 hands it sub-group
    partitions without that mapping, so per-layer trust ratios would be wrong.
    """
    if zero_stage >= 3 and find_optimizer(type_name) is not None:
        raise ConfigError(
            key="zero_optimization.stage",
            problem=f"{type_name} works with stages 0, 1 and 2, not {zero_stage} (ZeRO-3 "
            "partitions carry no per-layer mapping for the trust ratios); set "
            "zero_optimization.stage to 0, 1 or 2",
        )


class OptimizerFactory:
    """``callable(model_parameters) -> Optimizer``, the form ``deepspeed.initialize`` accepts.

    Built by :func:`build_optimizer_factory`; the options are already validated.
    """

    def __init__(
        self,
        cls: type[Optimizer],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        model: nn.Module | None,
        partitioned: bool = False,
    ):
        self.cls = cls
        self.kwargs = kwargs
        self.options = options
        self.model = model
        #: whether DeepSpeed will flatten the groups (ZeRO-1/2): excluded parameters are then
        #: marked within their group instead of split off (``split_param_groups(mark_only=)``)
        self.partitioned = partitioned

    def __call__(
        self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]] | None = None
    ) -> Optimizer:
        """Build the optimizer on ``params`` (default: the model's parameters).

        Biases and normalisation parameters (and ``exclude`` matches) are split into their own
        group with ``adapt=False`` and no weight decay, within each group of ``params``; when
        ``partitioned``, they stay in their group, marked ``excluded`` (the same update).
        """
        if params is None:
            if self.model is None:
                raise ValueError(
                    "OptimizerFactory: no parameters given and no model to take them from"
                )
            params = self.model.parameters()
        if self.options["exclude"] and self.model is None:
            raise ValueError(
                "OptimizerFactory: 'exclude' patterns need the model to name parameters"
            )
        groups = split_param_groups(params, self.model, **self.options, mark_only=self.partitioned)
        return self.cls(groups, **self.kwargs)

    def bind(self, model: nn.Module | None, partitioned: bool = False) -> OptimizerFactory:
        """This factory (already validated) for ``model``: the engine binds the factory that
        config validation built to the model it trains, without checking the options again.
        ``partitioned``: DeepSpeed will flatten the groups (ZeRO stage 1 or 2)."""
        return OptimizerFactory(self.cls, self.kwargs, self.options, model, partitioned)

    def __repr__(self) -> str:
        return f"OptimizerFactory({self.cls.__name__}, {self.kwargs}, {self.options})"


def build_optimizer_factory(
    type_name: str,
    params: Mapping[str, Any] | None,
    model: nn.Module | None = None,
) -> OptimizerFactory:
    """Validate a JSON ``optimizer`` section of one of our types and return its factory.

    Args:
        type_name: ``optimizer.type``, e.g. ``"LARS"`` (see :data:`OPTIMIZERS`).
        params: ``optimizer.params``: constructor arguments (``lr`` is required) plus the
            parameter-group options in :data:`GROUP_OPTIONS`.
        model: the module being trained; names parameters for ``exclude`` and supplies them
            when the factory is called without any. May be None for validation only.

    Returns:
        A callable taking the parameters (or parameter groups) DeepSpeed passes and returning
        the optimizer.

    Raises:
        ConfigError: one line per problem, each naming ``optimizer.type`` or
            ``optimizer.params.<key>``.
    """
    cls = find_optimizer(type_name)
    if cls is None:
        raise ConfigError(
            f"optimizer.type: {type_name!r} is not one of ds_twophase's optimizers "
            f"({', '.join(OPTIMIZERS)}){did_you_mean(str(type_name), OPTIMIZERS)}"
        )
    params = dict(params or {})
    signature = inspect.signature(cls.__init__)
    accepted = [n for n in signature.parameters if n not in ("self", "params")]
    unknown = unknown_keys(params, [*accepted, *GROUP_OPTIONS], owner=cls.__name__)
    errors = [str(p.under("optimizer.params.")) for p in unknown]
    required = [
        n
        for n, p in signature.parameters.items()
        if n in accepted and p.default is inspect.Parameter.empty
    ]
    for key in required:
        if key not in params:
            errors.append(f"optimizer.params.{key}: required by {cls.__name__}")
    if errors:
        raise ConfigError(errors)
    kwargs = {k: v for k, v in params.items() if k in accepted}
    options = {k: params.get(k, default) for k, default in GROUP_OPTIONS.items()}
    _check_options(options)
    check = ARGUMENT_CHECKS.get(cls)
    if check is not None:
        merged = {
            n: kwargs.get(n, p.default) for n, p in signature.parameters.items() if n in accepted
        }
        try:
            check(**merged)
        except ConfigError as exc:
            raise exc.under("optimizer.params.") from None
    return OptimizerFactory(cls, kwargs, options, model)


def _check_options(options: dict[str, Any]) -> None:
    if not isinstance(options["exclude_bias_and_norm"], bool):
        raise ConfigError(
            "optimizer.params.exclude_bias_and_norm: expected true or false, got "
            f"{options['exclude_bias_and_norm']!r}"
        )
    exclude = options["exclude"]
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, Sequence) or not all(isinstance(x, str) for x in exclude):
        raise ConfigError(
            "optimizer.params.exclude: expected a list of parameter-name patterns such as "
            f'["fc.*"], got {exclude!r}'
        )
    options["exclude"] = list(exclude)
