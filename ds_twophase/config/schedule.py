"""The ``scheduler`` section with its ``probe`` settings, and the ``trainer`` section (the
dataset, the model, and the probe layer checked against that model)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, Problem, did_you_mean, is_number
from ..schedulers import SCHEDULERS
from . import tools
from .sections import DEEPSPEED_SCHEDULERS, METRIC_SCHEDULERS, ComponentSpec, split_section

if TYPE_CHECKING:
    from ..probe import ProbeConfig
    from .trainer import TrainerConfig


def scheduler_section(
    cfg: dict[str, Any], zero_stage: int
) -> tuple[ComponentSpec | None, ProbeConfig | None, list[Problem]]:
    """Our scheduler type with its probe settings, or ``(None, probe, problems)`` for a type
    DeepSpeed or torch builds (checked by building it for a stand-in optimizer). A scheduler
    other than TwoPhaseLR takes a probe section only with ``every`` (hmax for analysis)."""
    type_name, params, errors = split_section(cfg, "scheduler")
    if type_name is None or errors:
        return None, None, errors
    params = dict(params)
    probe_raw = params.pop("probe", None)
    probe = None
    if type_name == "TwoPhaseLR":
        probe, probe_errors = _probe(probe_raw, zero_stage)
        errors += probe_errors
    elif probe_raw is not None:
        # Any other scheduler takes a probe section for probe.every only (analysis hmax).
        probe, probe_errors = _probe(probe_raw, zero_stage)
        errors += probe_errors
        if probe is not None and probe.every is None:
            errors.append(
                Problem(
                    "scheduler.params.probe",
                    f"{type_name} makes no decision from hmax; set probe.every to measure it "
                    "for analysis, or remove the probe section",
                )
            )
    if type_name not in SCHEDULERS:
        if type_name in METRIC_SCHEDULERS:
            return (
                None,
                None,
                [
                    Problem(
                        "scheduler.type",
                        f"'{type_name}' needs a metric, but DeepSpeed steps it once per "
                        "optimizer step with the batch size as the metric; use TwoPhaseLR (plateau-aware) "
                        "or WarmupStepLR",
                    )
                ],
            )
        if type_name in DEEPSPEED_SCHEDULERS:
            errors += _check_builtin_scheduler(type_name, params, deepspeed_own=True)
            return None, probe, errors
        torch_cls = getattr(torch.optim.lr_scheduler, type_name, None)
        if isinstance(torch_cls, type) and issubclass(
            torch_cls, torch.optim.lr_scheduler.LRScheduler
        ):
            errors += _check_builtin_scheduler(type_name, params, deepspeed_own=False)
            return None, probe, errors
        candidates = list(SCHEDULERS) + list(DEEPSPEED_SCHEDULERS)
        return (
            None,
            None,
            [
                Problem(
                    "scheduler.type",
                    f"unknown scheduler '{type_name}'{did_you_mean(type_name, candidates)}; "
                    f"ds_twophase has {', '.join(SCHEDULERS)}, DeepSpeed has "
                    f"{', '.join(DEEPSPEED_SCHEDULERS)}, or name a torch.optim.lr_scheduler class",
                )
            ],
        )
    if type_name == "TwoPhaseLR" and "probe_max_failures" in params:
        # the Python argument; JSON has one spelling
        errors.append(
            Problem(
                "scheduler.params.probe_max_failures",
                "write it as scheduler.params.probe.max_failures",
            )
        )
    errors += _check_scheduler_params(type_name, params, cfg)
    if type_name == "TwoPhaseLR":
        errors += _check_rule_options(params)
        if probe is not None:  # the schedule itself acts on probe.max_failures
            params["probe_max_failures"] = probe.max_failures
    return ComponentSpec(type_name, params), probe, errors


def _check_rule_options(params: dict[str, Any]) -> list[Problem]:
    """Options that would be silently ignored by the convergence rule chosen (their values are
    checked by the scheduler itself)."""
    convergence = params.get("convergence", "hessian")
    rise = params.get("rise", "paper")
    if "rise_z" in params and rise == "paper":
        return [
            Problem(
                "scheduler.params.rise_z",
                'has no effect with rise "paper"; set rise to "significant" or remove rise_z',
            )
        ]
    if convergence == "late_step" and "rise" in params:
        return [
            Problem(
                "scheduler.params.rise",
                "late_step compares nothing (its decays are fixed); remove rise or choose "
                "another convergence rule",
            )
        ]
    return []


def _check_scheduler_params(
    type_name: str, params: dict[str, Any], cfg: dict[str, Any]
) -> list[Problem]:
    """The scheduler's own parameter check (nothing is built: the engine builds it once), with
    the epoch budget of ``trainer.epochs`` and the peak LR of ``optimizer.params.lr`` when the
    config gives them."""
    optimizer = cfg.get("optimizer")
    opt_params = optimizer.get("params") if isinstance(optimizer, dict) else None
    peak = opt_params.get("lr") if isinstance(opt_params, dict) else None
    trainer = cfg.get("trainer")
    epochs = trainer.get("epochs") if isinstance(trainer, dict) else None
    problems = SCHEDULERS[type_name].check_params(
        params,
        total_epochs=epochs,
        peak_lr=float(peak) if is_number(peak) and peak > 0 else None,
    )
    return [p.under("scheduler.params.") for p in problems]


def _check_builtin_scheduler(
    type_name: str, params: dict[str, Any], *, deepspeed_own: bool
) -> list[Problem]:
    """Validate a scheduler DeepSpeed builds as ``cls(optimizer, **params)`` by building it for
    a stand-in optimizer (DeepSpeed's own classes are imported only when one is named)."""
    if deepspeed_own:
        from deepspeed.runtime import lr_schedules

        cls = getattr(lr_schedules, type_name)
    else:
        cls = getattr(torch.optim.lr_scheduler, type_name)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        _construct(cls, dummy, dict(params))
    except ConfigError as exc:
        return exc.problems
    return []


def _construct(cls: type, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]) -> Any:
    def build(**kw: Any) -> Any:
        return cls(optimizer, **kw)

    build.__signature__ = _signature_without_optimizer(cls)  # type: ignore[attr-defined]
    return tools.call_checked(build, kwargs, "scheduler.params.")


def _signature_without_optimizer(cls: type) -> Any:
    sig = inspect.signature(cls)
    return sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "optimizer"])


def _probe(raw: Any, zero_stage: int) -> tuple[ProbeConfig | None, list[Problem]]:
    from ..probe import ProbeConfig

    try:
        probe = tools.build_dataclass(ProbeConfig, raw or {}, "scheduler.params.probe.")
    except ConfigError as exc:
        return None, exc.problems
    if zero_stage == 3 and probe.mode == "rank0":
        return probe, [
            Problem(
                "scheduler.params.probe.mode",
                '"rank0" deadlocks under zero_optimization.stage 3 '
                '(the forward pass must run on every rank); use "sharded"',
            )
        ]
    return probe, []


def trainer_section(
    cfg: dict[str, Any], probe: ProbeConfig | None = None
) -> tuple[TrainerConfig | None, list[Problem]]:
    """The ``trainer`` section built and checked against its dataset and model (and the probe
    layer against that model: the one place it is checked before the run)."""
    raw = cfg.get("trainer")
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, []  # reported by check_top_level
    from ..data import describe_dataset
    from ..models import check_model
    from .trainer import TrainerConfig

    try:
        trainer = tools.build_dataclass(TrainerConfig, raw, "trainer.")
        num_classes, shape = describe_dataset(trainer.dataset)
        check_model(trainer.model, num_classes, shape, dataset_name=trainer.dataset.name)
    except ConfigError as exc:
        return None, exc.problems
    if probe is not None:
        problem = _check_probe_layer(trainer, probe.layer, num_classes, shape)
        if problem:
            return None, [problem]
    return trainer, []


def _check_probe_layer(
    trainer: TrainerConfig, layer: str | list[str], num_classes: int, shape: tuple[int, ...]
) -> Problem | None:
    """Why ``scheduler.params.probe.layer`` names no parametric module of the configured model
    (``None`` when it does, or for ``"auto"``): the probe's own :func:`resolve_layer` on the
    model built on the meta device."""
    if layer == "auto":
        return None
    from ..models import build_model
    from ..probe import UnknownLayer, resolve_layer

    with torch.device("meta"):
        model = build_model(trainer.model, num_classes, shape, check_forward=False)
    try:
        resolve_layer(model, layer)
    except UnknownLayer as exc:
        bad, candidates = exc.name, exc.candidates
        shown = ", ".join(candidates[-12:])
        if len(candidates) > 12:
            shown = f"..., {shown} (the last 12 of {len(candidates)})"
        return Problem(
            "scheduler.params.probe.layer",
            f"model '{trainer.model.name}' has no module "
            f"'{bad}' with parameters{did_you_mean(bad, candidates)}; use \"auto\" or one of: {shown}",
        )
    return None
