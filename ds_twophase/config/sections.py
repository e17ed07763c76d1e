"""Checks of the sections DeepSpeed reads: unknown top-level keys, precision, ZeRO stage, and
the shape of the ``optimizer``/``scheduler`` sections."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import Problem, did_you_mean, unknown_keys

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
    "zero_force_ds_cpu_optimizer",
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
    """Constructor arguments from the JSON ``params`` (without ``probe`` for schedulers;
    TwoPhaseLR's ``probe_max_failures`` comes from ``probe.max_failures``)."""


def check_top_level(cfg: dict[str, Any]) -> list[Problem]:
    errors = []
    for key in cfg:
        if key in KNOWN_TOP_LEVEL:
            continue
        hint = did_you_mean(key, KNOWN_TOP_LEVEL)
        # DeepSpeed ignores keys it does not know; only a near-miss of a real key is an error.
        if hint:
            errors.append(Problem(f"{key}", f"unknown top-level key{hint}"))
    for key in ("optimizer", "scheduler", "zero_optimization", "fp16", "bf16", "trainer"):
        if key in cfg and not isinstance(cfg[key], dict):
            errors.append(Problem(f"{key}", f"must be a JSON object, got {json.dumps(cfg[key])}"))
    return errors


def check_precision(cfg: dict[str, Any]) -> list[Problem]:
    errors = []
    fp16: dict[str, Any] = cfg["fp16"] if isinstance(cfg.get("fp16"), dict) else {}
    bf16: dict[str, Any] = cfg["bf16"] if isinstance(cfg.get("bf16"), dict) else {}
    for name, section in (("fp16", fp16), ("bf16", bf16)):
        if "enabled" in section and not isinstance(section["enabled"], bool):
            errors.append(
                Problem(
                    f"{name}.enabled",
                    f"expected true or false, got {json.dumps(section['enabled'])}",
                )
            )
    if fp16.get("enabled") is True:
        if bf16.get("enabled") is True:
            errors.append(Problem("fp16.enabled", "fp16 and bf16 cannot both be enabled; keep one"))
        elif not torch.cuda.is_available():
            errors.append(
                Problem(
                    "fp16.enabled",
                    "fp16 needs a GPU and this machine has none; use "
                    '"bf16": {"enabled": true} or fp32',
                )
            )
    return errors


def zero_stage(cfg: dict[str, Any]) -> tuple[int, list[Problem]]:
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        return 0, []
    stage = zero["stage"]
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        return 0, [
            Problem("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {json.dumps(stage)}")
        ]
    return int(stage), []


def split_section(
    cfg: dict[str, Any], name: str
) -> tuple[str | None, dict[str, Any], list[Problem]]:
    section = cfg.get(name)
    if not isinstance(section, dict):
        return None, {}, []
    errors = [p.under(f"{name}.") for p in unknown_keys(section, ("type", "params"))]
    type_name = section.get("type")
    if not isinstance(type_name, str) or not type_name:
        errors.append(Problem(f"{name}.type", f"required, a string naming the {name}"))
        type_name = None
    params = section.get("params", {})
    if not isinstance(params, dict):
        errors.append(Problem(f"{name}.params", f"must be a JSON object, got {json.dumps(params)}"))
        params = {}
    return type_name, params, errors
