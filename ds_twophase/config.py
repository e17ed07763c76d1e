"""Load a run's JSON config, apply ``--set`` overrides, and validate it before any worker trains.

A run config is a DeepSpeed config in which ``optimizer``/``scheduler`` may name ds_twophase
types (``LARS``, ``TwoPhaseLR``, ``WarmupStepLR``), the probe settings sit under the scheduler's
``params.probe``, and a ``trainer`` section holds what DeepSpeed does not know. Validation
collects every problem as one line naming the key and the fix (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config_tools
from .errors import ConfigError, did_you_mean
from .schedulers import SCHEDULERS

# DeepSpeed's own optimizer names (deepspeed/runtime/config.py, matched case-insensitively);
# anything else DeepSpeed looks up as torch.optim.<name>.
DEEPSPEED_OPTIMIZERS = (
    "adagrad",
    "adam",
    "adamw",
    "lamb",
    "onebitadam",
    "onebitlamb",
    "zerooneadam",
    "muadam",
    "muadamw",
    "musgd",
    "lion",
    "muon",
)
# DeepSpeed's built-in schedules (deepspeed/runtime/lr_schedules.py); anything else DeepSpeed
# looks up as torch.optim.lr_scheduler.<name>.
DEEPSPEED_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
# Schedulers whose step() takes a metric: DeepSpeed drives them once per optimizer step and,
# without lr_kwargs, passes the batch size as the metric (verified on 0.19.8).
METRIC_SCHEDULERS = ("ReduceLROnPlateau",)
# Top-level keys DeepSpeed reads, used only to catch misspellings of them.
KNOWN_TOP_LEVEL = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
    "fp16",
    "bf16",
    "amp",
    "zero_optimization",
    "gradient_clipping",
    "steps_per_print",
    "wall_clock_breakdown",
    "dump_state",
    "prescale_gradients",
    "gradient_predivide_factor",
    "sparse_gradients",
    "zero_allow_untested_optimizer",
    "activation_checkpointing",
    "tensorboard",
    "csv_monitor",
    "wandb",
    "comet",
    "flops_profiler",
    "communication_data_type",
    "seq_parallel_communication_data_type",
    "dataloader_drop_last",
    "checkpoint",
    "data_types",
    "memory_breakdown",
    "compression_training",
    "data_efficiency",
    "elasticity",
    "aio",
    "autotuning",
    "pipeline",
    "trainer",
    "disable_allgather",
    "zero_force_ds_cpu_optimizer",
    "torch_autocast",
    "compile",
    "timers",
    "weight_quantization",
)


@dataclass
class ComponentSpec:
    """A ds_twophase type named in the JSON, with its validated constructor arguments."""

    type: str
    """The registered type name, e.g. ``"TwoPhaseLR"`` or ``"LARS"``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments from the JSON ``params`` (without ``probe`` for schedulers)."""


@dataclass
class RunConfig:
    """A validated run config, split into what DeepSpeed gets and what ds_twophase owns."""

    deepspeed: dict[str, Any]
    """The config handed to ``deepspeed.initialize``: no ``trainer`` section, and without the
    ``optimizer``/``scheduler`` sections when those name ds_twophase types."""
    resolved: dict[str, Any]
    """The whole config after overrides, as written to the run's output directory."""
    optimizer: ComponentSpec | None = None
    """Our optimizer type (LARS), or ``None`` when DeepSpeed/torch builds it."""
    scheduler: ComponentSpec | None = None
    """Our scheduler type, or ``None`` when DeepSpeed/torch builds it."""
    probe: Any = None
    """The validated ``ProbeConfig`` for TwoPhaseLR, else ``None``."""
    trainer: Any = None
    """The validated ``trainer`` section (``TrainerConfig``), or ``None`` when absent."""

    @property
    def zero_stage(self) -> int:
        """``zero_optimization.stage`` (0 when absent)."""
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))


def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> dict[str, Any]:
    """The config as a dict (a deep copy when given a dict), with ``--set`` overrides applied."""
    cfg = copy.deepcopy(source) if isinstance(source, dict) else config_tools.load_json(source)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` override; the value is JSON, or a plain string if not JSON."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set '{item}': expected KEY=VALUE with a dotted key, e.g. trainer.epochs=30"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"--set '{item}': '{where}' is {type(child).__name__}, not an object; "
                f"set '{where}' itself or fix the key"
            )
        node = child
    node[parts[-1]] = value


def validate_config(cfg: dict[str, Any], *, world_size: int | None = None) -> RunConfig:
    """Check a whole run config; raises :class:`ConfigError` listing every problem found.

    ``world_size`` is the data-parallel size used for the batch arithmetic (unknown: only the
    checks that do not need it).
    """
    errors: list[str] = []
    resolved = copy.deepcopy(cfg)
    ds = copy.deepcopy(cfg)
    ds.pop("trainer", None)
    errors += _check_top_level(cfg)
    errors += _check_batch(cfg, world_size)
    errors += _check_precision(cfg)
    zero_stage, zero_errors = _zero_stage(cfg)
    errors += zero_errors

    optimizer, opt_errors = _optimizer(cfg, zero_stage)
    errors += opt_errors
    if optimizer is not None:
        ds.pop("optimizer", None)
        if zero_stage in (1, 2):  # ours are made for ZeRO-1/2; DeepSpeed asserts without this
            ds.setdefault("zero_allow_untested_optimizer", True)
    scheduler, probe, sched_errors = _scheduler(cfg, zero_stage)
    errors += sched_errors
    if scheduler is not None:
        ds.pop("scheduler", None)
    trainer, trainer_errors = _trainer(cfg, probe)
    errors += trainer_errors
    if trainer is not None and not errors:
        errors += _check_train_size(cfg, trainer, world_size)
    if errors:
        raise ConfigError(errors)
    return RunConfig(
        deepspeed=ds,
        resolved=resolved,
        optimizer=optimizer,
        scheduler=scheduler,
        probe=probe,
        trainer=trainer,
    )


def resolve_batch(cfg: dict[str, Any], world_size: int) -> tuple[int, int, int]:
    """``(train_batch_size, micro_batch_per_rank, gradient_accumulation_steps)`` filled in the
    way DeepSpeed fills the missing ones (call on a validated config)."""
    train = cfg.get("train_batch_size")
    micro = cfg.get("train_micro_batch_size_per_gpu")
    gas = cfg.get("gradient_accumulation_steps")
    if train is not None and micro is not None and gas is None:
        gas = train // (micro * world_size)
    elif train is not None and gas is not None and micro is None:
        micro = train // (gas * world_size)
    elif train is None and micro is not None:
        gas = gas or 1
        train = micro * gas * world_size
    elif micro is None and gas is None:
        gas = 1
        micro = train // world_size
    return int(train), int(micro), int(gas)


def _check_top_level(cfg: dict[str, Any]) -> list[str]:
    errors = []
    for key in cfg:
        if key in KNOWN_TOP_LEVEL:
            continue
        hint = did_you_mean(key, KNOWN_TOP_LEVEL)
        # DeepSpeed ignores keys it does not know; only a near-miss of a real key is an error.
        if hint:
            errors.append(f"{key}: unknown top-level key{hint}")
    for key in ("optimizer", "scheduler", "zero_optimization", "fp16", "bf16", "trainer"):
        if key in cfg and not isinstance(cfg[key], dict):
            errors.append(f"{key}: must be a JSON object, got {json.dumps(cfg[key])}")
    return errors


def _positive_int(cfg: dict[str, Any], key: str, errors: list[str]) -> int | None:
    if key not in cfg:
        return None
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errors.append(f"{key}: must be a positive integer, got {json.dumps(value)}")
        return None
    return value


def _check_batch(cfg: dict[str, Any], world_size: int | None) -> list[str]:
    errors: list[str] = []
    train = _positive_int(cfg, "train_batch_size", errors)
    micro = _positive_int(cfg, "train_micro_batch_size_per_gpu", errors)
    gas = _positive_int(cfg, "gradient_accumulation_steps", errors)
    if errors:
        return errors
    if train is None and micro is None:
        return ["train_batch_size: set train_batch_size or train_micro_batch_size_per_gpu"]
    if world_size is None:
        if train is not None and micro is not None and train % micro:
            errors.append(
                f"train_batch_size: {train} is not a multiple of train_micro_batch_size_per_gpu "
                f"({micro}); it must equal micro batch x gradient_accumulation_steps x ranks"
            )
        if train is not None and micro is not None and gas is not None and train % (micro * gas):
            errors.append(
                f"train_batch_size: {train} is not divisible by micro batch x "
                f"gradient_accumulation_steps ({micro} x {gas}); fix one of the three"
            )
        return errors
    ranks = world_size
    if train is not None and micro is not None and gas is not None:
        if train != micro * gas * ranks:
            errors.append(
                f"train_batch_size: {train} != train_micro_batch_size_per_gpu x "
                f"gradient_accumulation_steps x ranks = {micro} x {gas} x {ranks} = "
                f"{micro * gas * ranks}; fix one of them"
            )
    elif train is not None and micro is not None:
        if train % (micro * ranks):
            errors.append(
                f"train_batch_size: {train} is not divisible by "
                f"train_micro_batch_size_per_gpu x ranks = {micro} x {ranks}; use a multiple "
                f"of {micro * ranks} or another micro batch"
            )
    elif train is not None and gas is not None:
        if train % (gas * ranks):
            errors.append(
                f"train_batch_size: {train} is not divisible by "
                f"gradient_accumulation_steps x ranks = {gas} x {ranks}; use a multiple of "
                f"{gas * ranks}"
            )
    elif train is not None and train % ranks:
        errors.append(
            f"train_batch_size: {train} is not divisible by the {ranks} ranks; use a multiple "
            f"of {ranks}"
        )
    return errors


def _check_precision(cfg: dict[str, Any]) -> list[str]:
    errors = []
    fp16 = cfg.get("fp16") if isinstance(cfg.get("fp16"), dict) else {}
    bf16 = cfg.get("bf16") if isinstance(cfg.get("bf16"), dict) else {}
    for name, section in (("fp16", fp16), ("bf16", bf16)):
        if "enabled" in section and not isinstance(section["enabled"], bool):
            errors.append(
                f"{name}.enabled: expected true or false, got {json.dumps(section['enabled'])}"
            )
    if fp16.get("enabled") is True:
        if bf16.get("enabled") is True:
            errors.append("fp16.enabled: fp16 and bf16 cannot both be enabled; keep one")
        elif not torch.cuda.is_available():
            errors.append(
                "fp16.enabled: fp16 needs a GPU and this machine has none; use "
                '"bf16": {"enabled": true} or fp32'
            )
    return errors


def _zero_stage(cfg: dict[str, Any]) -> tuple[int, list[str]]:
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        return 0, []
    stage = zero["stage"]
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        return 0, [f"zero_optimization.stage: must be 0, 1, 2 or 3, got {json.dumps(stage)}"]
    return int(stage), []


def _section(cfg: dict[str, Any], name: str) -> tuple[str | None, dict[str, Any], list[str]]:
    section = cfg.get(name)
    if not isinstance(section, dict):
        return None, {}, []
    errors = config_tools.check_keys(section, ("type", "params"), f"{name}.")
    type_name = section.get("type")
    if not isinstance(type_name, str) or not type_name:
        errors.append(f"{name}.type: required, a string naming the {name}")
        type_name = None
    params = section.get("params", {})
    if not isinstance(params, dict):
        errors.append(f"{name}.params: must be a JSON object, got {json.dumps(params)}")
        params = {}
    return type_name, params, errors


def _optimizer(cfg: dict[str, Any], zero_stage: int) -> tuple[ComponentSpec | None, list[str]]:
    from .optim import OPTIMIZERS, build_optimizer_factory, check_zero_compatible, find_optimizer

    type_name, params, errors = _section(cfg, "optimizer")
    if type_name is None or errors:
        return None, errors
    cls = find_optimizer(type_name)
    if cls is not None:
        try:
            build_optimizer_factory(type_name, params)  # validates every key and value
        except ConfigError as exc:
            return None, exc.messages
        try:
            check_zero_compatible(zero_stage, type_name)
        except ConfigError as exc:
            return None, exc.messages
        return ComponentSpec(cls.__name__, dict(params)), []
    if type_name.lower() in DEEPSPEED_OPTIMIZERS:
        return None, _check_deepspeed_optimizer_params(params)
    torch_cls = getattr(torch.optim, type_name, None)
    if isinstance(torch_cls, type) and issubclass(torch_cls, torch.optim.Optimizer):
        return None, _check_torch_optimizer(cfg, torch_cls, params, zero_stage)
    candidates = (
        list(OPTIMIZERS)
        + list(DEEPSPEED_OPTIMIZERS)
        + [n for n in dir(torch.optim) if n[:1].isupper()]
    )
    return None, [
        f"optimizer.type: unknown optimizer '{type_name}'{did_you_mean(type_name, candidates)}; "
        f"ds_twophase has {', '.join(OPTIMIZERS)}, DeepSpeed has "
        f"{', '.join(DEEPSPEED_OPTIMIZERS)}, or name a torch.optim class"
    ]


def _check_deepspeed_optimizer_params(params: dict[str, Any]) -> list[str]:
    """What can be checked of a DeepSpeed-built optimizer's params without importing it."""
    errors = []
    if "max_grad_norm" in params:
        errors.append(
            "optimizer.params.max_grad_norm: DeepSpeed refuses it; remove it and set the "
            'top-level "gradient_clipping" instead'
        )
    lr = params.get("lr", 0.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < math.inf:
        errors.append(f"optimizer.params.lr: must be a number >= 0, got {json.dumps(lr)}")
    return errors


def _check_torch_optimizer(
    cfg: dict[str, Any], cls: type, params: dict[str, Any], zero_stage: int
) -> list[str]:
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
        f"optimizer.params.{key}: expected {expected} like the default "
        f"{json.dumps(list(default) if isinstance(default, tuple) else default)}, "
        f"got {json.dumps(params[key])}"
        for key, p in sig.parameters.items()
        if key in params
        for default in [p.default]
        for expected in [_json_type_mismatch(default, params[key])]
        if expected
    ]
    if errors:
        return errors
    try:
        config_tools.call_checked(build, params, "optimizer.params.")
    except ConfigError as exc:
        return [_name_torch_param(m, params) for m in exc.messages]
    # DeepSpeed asserts (deepspeed/runtime/zero/utils.py: ZERO_SUPPORTED_OPTIMIZERS): of the
    # torch.optim classes only Adam, AdamW and Adagrad pass, and those names take DeepSpeed's
    # own path (matched case-insensitively), never this one.
    if zero_stage and cfg.get("zero_allow_untested_optimizer") is not True:
        return [
            f"optimizer.type: DeepSpeed refuses '{name}' under zero_optimization.stage "
            f"{zero_stage} (not one of its ZeRO-tested optimizers); set "
            '"zero_allow_untested_optimizer": true, use Adam/AdamW/Adagrad, or set '
            "zero_optimization.stage to 0"
        ]
    return []


def _json_type_mismatch(default: Any, value: Any) -> str | None:
    """What JSON type ``value`` should have been, judged by the parameter's default (``None``
    when it fits or the default says nothing)."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

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


def _name_torch_param(message: str, params: dict[str, Any]) -> str:
    """Put the parameter's key in front of a torch.optim error that only names the section."""
    head = "optimizer.params: "
    if not message.startswith(head):
        return message
    text = message[len(head) :]
    lowered = text.lower()
    key = next((k for k in params if k in lowered), None)
    if key is None:
        key = next((k for w, k in _TORCH_PARAM_WORDS.items() if w in lowered and k in params), None)
    return f"optimizer.params.{key}: {text}" if key else message


def _scheduler(cfg: dict[str, Any], zero_stage: int) -> tuple[ComponentSpec | None, Any, list[str]]:
    type_name, params, errors = _section(cfg, "scheduler")
    if type_name is None or errors:
        return None, None, errors
    if type_name not in SCHEDULERS:
        if type_name in METRIC_SCHEDULERS:
            return (
                None,
                None,
                [
                    f"scheduler.type: '{type_name}' needs a metric, but DeepSpeed steps it once per "
                    "optimizer step with the batch size as the metric; use TwoPhaseLR (plateau-aware) "
                    "or WarmupStepLR"
                ],
            )
        if type_name in DEEPSPEED_SCHEDULERS:
            return None, None, _check_builtin_scheduler(type_name, params, deepspeed_own=True)
        torch_cls = getattr(torch.optim.lr_scheduler, type_name, None)
        if isinstance(torch_cls, type) and issubclass(
            torch_cls, torch.optim.lr_scheduler.LRScheduler
        ):
            return None, None, _check_builtin_scheduler(type_name, params, deepspeed_own=False)
        candidates = list(SCHEDULERS) + list(DEEPSPEED_SCHEDULERS)
        return (
            None,
            None,
            [
                f"scheduler.type: unknown scheduler '{type_name}'{did_you_mean(type_name, candidates)}; "
                f"ds_twophase has {', '.join(SCHEDULERS)}, DeepSpeed has "
                f"{', '.join(DEEPSPEED_SCHEDULERS)}, or name a torch.optim.lr_scheduler class"
            ],
        )
    params = dict(params)
    probe_raw = params.pop("probe", None)
    probe = None
    if type_name == "TwoPhaseLR":
        probe, probe_errors = _probe(probe_raw, zero_stage)
        errors += probe_errors
    elif probe_raw is not None:
        errors.append(f"scheduler.params.probe: only TwoPhaseLR uses a probe, not {type_name}")
    errors += _check_scheduler_params(type_name, params, cfg)
    return ComponentSpec(type_name, params), probe, errors


def _check_scheduler_params(
    type_name: str, params: dict[str, Any], cfg: dict[str, Any]
) -> list[str]:
    """Validate by building the real scheduler against a stand-in optimizer."""
    cls = SCHEDULERS[type_name]
    optimizer = cfg.get("optimizer")
    opt_params = optimizer.get("params") if isinstance(optimizer, dict) else None
    peak = opt_params.get("lr", 1.0) if isinstance(opt_params, dict) else 1.0
    if isinstance(peak, bool) or not isinstance(peak, (int, float)) or peak <= 0:
        peak = 1.0
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    epochs = trainer.get("epochs", 1)
    filled = {
        "steps_per_epoch": 1,
        "total_epochs": epochs if isinstance(epochs, int) and epochs > 0 else 1,
    }
    filled.update(params)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(peak))
    try:
        _construct(cls, dummy, filled)
    except ConfigError as exc:
        return exc.messages
    return []


def _check_builtin_scheduler(
    type_name: str, params: dict[str, Any], *, deepspeed_own: bool
) -> list[str]:
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
        return exc.messages
    return []


def _construct(cls: type, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]) -> Any:
    def build(**kw: Any) -> Any:
        return cls(optimizer, **kw)

    build.__signature__ = _signature_without_optimizer(cls)  # type: ignore[attr-defined]
    return config_tools.call_checked(build, kwargs, "scheduler.params.")


def _signature_without_optimizer(cls: type) -> Any:
    sig = inspect.signature(cls)
    return sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "optimizer"])


def _probe(raw: Any, zero_stage: int) -> tuple[Any, list[str]]:
    from .probe import ProbeConfig

    try:
        probe = config_tools.build_dataclass(ProbeConfig, raw or {}, "scheduler.params.probe.")
    except ConfigError as exc:
        return None, exc.messages
    if zero_stage == 3 and probe.mode == "rank0":
        return probe, [
            'scheduler.params.probe.mode: "rank0" deadlocks under zero_optimization.stage 3 '
            '(the forward pass must run on every rank); use "sharded"'
        ]
    return probe, []


def _trainer(cfg: dict[str, Any], probe: Any = None) -> tuple[Any, list[str]]:
    raw = cfg.get("trainer")
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, []  # reported by _check_top_level
    from .data import describe_dataset
    from .models import check_model
    from .trainer_config import TrainerConfig

    try:
        trainer = config_tools.build_dataclass(TrainerConfig, raw, "trainer.")
        num_classes, shape = describe_dataset(trainer.dataset)
        check_model(trainer.model, num_classes, shape, dataset_name=trainer.dataset.name)
    except ConfigError as exc:
        return None, exc.messages
    if probe is not None:
        problem = _check_probe_layer(trainer, probe.layer, num_classes, shape)
        if problem:
            return None, [problem]
    return trainer, []


def _check_probe_layer(
    trainer: Any, layer: str | list[str], num_classes: int, shape: tuple[int, ...]
) -> str | None:
    """Why ``scheduler.params.probe.layer`` names no parametric module of the configured model
    (``None`` when it does, or for ``"auto"``). The model is built on the meta device."""
    if layer == "auto":
        return None
    from .hessian import parametric_modules, resolve_layer
    from .models import build_model

    with torch.device("meta"):
        model = build_model(trainer.model, num_classes, shape, check_forward=False)
    try:
        resolve_layer(model, layer)
    except ValueError:
        names = [layer] if isinstance(layer, str) else list(layer)
        with_params = {
            n for n, m in model.named_modules() if next(m.parameters(), None) is not None
        }
        bad = next((n for n in names if n not in with_params), str(layer))
        candidates = list(parametric_modules(model))
        shown = ", ".join(candidates[-12:])
        if len(candidates) > 12:
            shown = f"..., {shown} (the last 12 of {len(candidates)})"
        return (
            f"scheduler.params.probe.layer: model '{trainer.model.name}' has no module "
            f"'{bad}' with parameters{did_you_mean(bad, candidates)}; use \"auto\" or one of: {shown}"
        )
    return None


def _check_train_size(cfg: dict[str, Any], trainer: Any, world_size: int | None) -> list[str]:
    """One global batch must fit in the training split (else an epoch has no optimizer step)."""
    train_size = trainer.dataset.resolved_sizes()[0]
    if train_size is None:  # a real dataset used whole: its size is known only once it is read
        return []
    if world_size is not None:
        batch = resolve_batch(cfg, world_size)[0]
    elif isinstance(cfg.get("train_batch_size"), int):
        batch = cfg["train_batch_size"]
    else:
        return []
    if train_size >= batch:
        return []
    key = "trainer.dataset.train_size"
    given = "" if trainer.dataset.train_size is not None else " (the dataset's default)"
    return [
        f"{key}: {train_size} training samples{given} are fewer than one global batch of "
        f"{batch} (train_batch_size), so an epoch would have no optimizer step; set {key} to at "
        f"least {batch} or lower train_batch_size"
    ]
