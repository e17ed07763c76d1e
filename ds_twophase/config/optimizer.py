"""The ``optimizer`` section: ds_twophase's own types (LARS, whose factory is built here once
and reused by the engine), DeepSpeed's built-in names, or a ``torch.optim`` class."""

from __future__ import annotations

import inspect
import json
import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, Problem, did_you_mean, is_number
from . import tools
from .sections import DEEPSPEED_OPTIMIZERS, ComponentSpec, split_section

if TYPE_CHECKING:
    from ..optim import OptimizerFactory


def optimizer_section(
    cfg: dict[str, Any], zero_stage: int
) -> tuple[ComponentSpec | None, OptimizerFactory | None, list[Problem]]:
    """Our optimizer type with its validated factory, or ``(None, None, problems)`` for a type
    DeepSpeed or torch builds (checked here as far as possible)."""
    from ..optim import OPTIMIZERS, build_optimizer_factory, check_zero_compatible, find_optimizer

    type_name, params, errors = split_section(cfg, "optimizer")
    if type_name is None or errors:
        return None, None, errors
    cls = find_optimizer(type_name)
    if cls is not None:
        try:
            factory = build_optimizer_factory(type_name, params)  # validates every key and value
        except ConfigError as exc:
            return None, None, exc.problems
        try:
            check_zero_compatible(zero_stage, type_name)
        except ConfigError as exc:
            return None, None, exc.problems
        return ComponentSpec(cls.__name__, dict(params)), factory, []
    if type_name.lower() in DEEPSPEED_OPTIMIZERS:
        return None, None, _check_deepspeed_optimizer_params(params)
    torch_cls = getattr(torch.optim, type_name, None)
    if isinstance(torch_cls, type) and issubclass(torch_cls, torch.optim.Optimizer):
        return None, None, _check_torch_optimizer(cfg, torch_cls, params, zero_stage)
    candidates = (
        list(OPTIMIZERS)
        + list(DEEPSPEED_OPTIMIZERS)
        + [n for n in dir(torch.optim) if n[:1].isupper()]
    )
    return (
        None,
        None,
        [
            Problem(
                "optimizer.type",
                f"unknown optimizer '{type_name}'{did_you_mean(type_name, candidates)}; "
                f"ds_twophase has {', '.join(OPTIMIZERS)}, DeepSpeed has "
                f"{', '.join(DEEPSPEED_OPTIMIZERS)}, or name a torch.optim class",
            )
        ],
    )


def zero_switches(ds: dict[str, Any], zero_stage: int, type_name: str) -> list[Problem]:
    """Set, in the DeepSpeed config ``ds``, the switches without which DeepSpeed refuses a client
    optimizer under ZeRO-1/2, for one of ours (made for those stages): ZeRO's list of tested
    optimizers, and, with ``offload_optimizer`` on the CPU, its demand for DeepSpeed's own CPU
    Adam (LARS's fused CPU kernel steps the offloaded partition). A switch the user set the
    other way is one problem naming it, instead of DeepSpeed's exception."""
    if zero_stage not in (1, 2):
        return []
    zero = ds.get("zero_optimization")
    zero = zero if isinstance(zero, dict) else {}
    offload = zero.get("offload_optimizer")
    offload = offload if isinstance(offload, dict) else {}
    switches = [("zero_allow_untested_optimizer", True, f"zero_optimization.stage {zero_stage}")]
    if offload.get("device") in ("cpu", "nvme") or zero.get("cpu_offload") is True:
        switches.append(("zero_force_ds_cpu_optimizer", False, "optimizer offload"))
    problems = []
    for key, needed, where in switches:
        value = ds.setdefault(key, needed)
        if value is not needed:
            problems.append(
                Problem(
                    key,
                    f"{json.dumps(value)} makes DeepSpeed refuse {type_name} under {where}; "
                    f"remove it or set it to {json.dumps(needed)}",
                )
            )
    return problems


def _check_deepspeed_optimizer_params(params: dict[str, Any]) -> list[Problem]:
    """What can be checked of a DeepSpeed-built optimizer's params without importing it."""
    errors = []
    if "max_grad_norm" in params:
        errors.append(
            Problem(
                "optimizer.params.max_grad_norm",
                'DeepSpeed refuses it; remove it and set the top-level "gradient_clipping" instead',
            )
        )
    lr = params.get("lr", 0.0)
    if not is_number(lr) or not 0 <= lr < math.inf:
        errors.append(
            Problem("optimizer.params.lr", f"must be a number >= 0, got {json.dumps(lr)}")
        )
    return errors


def _check_torch_optimizer(
    cfg: dict[str, Any], cls: type, params: dict[str, Any], zero_stage: int
) -> list[Problem]:
    """Validate a ``torch.optim`` optimizer (which DeepSpeed builds as ``cls(params, **params)``)
    by building it for one stand-in parameter."""
    errors = _check_deepspeed_optimizer_params(params)
    if errors:
        return errors
    name = cls.__name__

    def build(**kw: Any) -> Any:
        return cls([torch.nn.Parameter(torch.zeros(1))], **kw)

    sig = inspect.signature(cls)
    build.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in sig.parameters.items() if n != "params"]
    )
    errors = [
        Problem(
            f"optimizer.params.{key}",
            f"expected {expected} like the default "
            f"{json.dumps(list(default) if isinstance(default, tuple) else default)}, "
            f"got {json.dumps(params[key])}",
        )
        for key, p in sig.parameters.items()
        if key in params
        for default in [p.default]
        for expected in [_json_type_mismatch(default, params[key])]
        if expected
    ]
    if errors:
        return errors
    try:
        tools.call_checked(build, params, "optimizer.params.")
    except ConfigError as exc:
        return [_name_torch_param(p, params) for p in exc.problems]
    # DeepSpeed asserts (deepspeed/runtime/zero/utils.py: ZERO_SUPPORTED_OPTIMIZERS): of the
    # torch.optim classes only Adam, AdamW and Adagrad pass, and those names take DeepSpeed's
    # own path (matched case-insensitively), never this one.
    if zero_stage and cfg.get("zero_allow_untested_optimizer") is not True:
        return [
            Problem(
                "optimizer.type",
                f"DeepSpeed refuses '{name}' under zero_optimization.stage "
                f"{zero_stage} (not one of its ZeRO-tested optimizers); set "
                '"zero_allow_untested_optimizer": true, use Adam/AdamW/Adagrad, or set '
                "zero_optimization.stage to 0",
            )
        ]
    return []


def _json_type_mismatch(default: Any, value: Any) -> str | None:
    """What JSON type ``value`` should have been, judged by the parameter's default (``None``
    when it fits or the default says nothing)."""
    number = is_number

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if number(default) and not isinstance(default, torch.Tensor):
        return None if number(value) else "a number"
    if isinstance(default, tuple) and all(number(d) for d in default):
        ok = isinstance(value, list) and len(value) == len(default) and all(map(number, value))
        return None if ok else f"a list of {len(default)} numbers"
    return None


# torch.optim's value errors name the quantity in words ("Invalid learning rate: -1").
_TORCH_PARAM_WORDS = {"learning rate": "lr", "epsilon": "eps", "beta": "betas"}


def _name_torch_param(problem: Problem, params: dict[str, Any]) -> Problem:
    """Key a torch.optim error that only names the section (``optimizer.params``) by the
    parameter its text mentions (torch's messages are all there is to go on)."""
    if problem.key != "optimizer.params":
        return problem
    lowered = problem.problem.lower()
    key = next((k for k in params if k in lowered), None)
    if key is None:
        key = next((k for w, k in _TORCH_PARAM_WORDS.items() if w in lowered and k in params), None)
    return Problem(f"optimizer.params.{key}", problem.problem) if key else problem
