"""``validate_config``: one pass over a whole run config, giving a :class:`RunConfig`.

The pass collects every problem (each a :class:`~ds_twophase.errors.Problem` naming its key) and
builds what the run reuses afterwards: the LARS factory and the typed probe and trainer
settings. The only check that needs the world size, the batch arithmetic, is
:meth:`RunConfig.check_world_size`, run once the world size is known.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, Problem
from . import tools
from .batch import Batch, check_batch, no_step_problem, resolve_batch
from .optimizer import optimizer_section, zero_switches
from .schedule import scheduler_section, trainer_section
from .sections import ComponentSpec, check_precision, check_top_level, zero_stage

if TYPE_CHECKING:
    from ..optim import OptimizerFactory
    from ..probe import ProbeConfig
    from .trainer import TrainerConfig


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
    optimizer_factory: OptimizerFactory | None = None
    """The validated factory of :attr:`optimizer` (no model bound yet), built once here and
    handed to ``deepspeed.initialize`` by the engine."""
    scheduler: ComponentSpec | None = None
    """Our scheduler type, or ``None`` when DeepSpeed/torch builds it."""
    probe: ProbeConfig | None = None
    """The validated probe settings (``scheduler.params.probe``): always for TwoPhaseLR, for
    other schedulers only with ``probe.every``; else ``None``."""
    trainer: TrainerConfig | None = None
    """The validated ``trainer`` section, or ``None`` when absent."""
    batch: Batch | None = None
    """The resolved batch sizes, once :meth:`check_world_size` has run."""

    @property
    def schedule_probe(self) -> ProbeConfig | None:
        """The probe settings when the schedule itself decides from hmax (TwoPhaseLR)."""
        if self.scheduler is None or self.scheduler.type != "TwoPhaseLR":
            return None
        return self.probe

    @property
    def zero_stage(self) -> int:
        """``zero_optimization.stage`` (0 when absent)."""
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    def check_world_size(self, world_size: int) -> Batch:
        """The batch arithmetic for ``world_size`` data-parallel ranks: the resolved sizes
        (also kept in :attr:`batch`), or :class:`ConfigError`. A repeat call for the same world
        size costs nothing."""
        if self.batch is not None and self.batch.world_size == world_size:
            return self.batch
        problems = check_batch(self.resolved, world_size)
        if problems:
            raise ConfigError(problems)
        batch = resolve_batch(self.resolved, world_size)
        problem = _train_size_problem(self.trainer, batch.train)
        if problem:
            raise ConfigError(problem)
        self.batch = batch
        return batch


def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> dict[str, Any]:
    """The config as a dict (a deep copy when given a dict), with ``--set`` overrides applied."""
    cfg = copy.deepcopy(source) if isinstance(source, dict) else tools.load_json(source)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` override; the value is JSON, or a plain string if not JSON."""
    key, sep, text = item.partition("=")
    key = key.strip()
    flag = f"--set '{item}'"
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            key=flag, problem="expected KEY=VALUE with a dotted key, e.g. trainer.epochs=30"
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
                key=flag,
                problem=f"'{where}' is {type(child).__name__}, not an object; "
                f"set '{where}' itself or fix the key",
            )
        node = child
    node[parts[-1]] = value


def validate_config(cfg: dict[str, Any], *, world_size: int | None = None) -> RunConfig:
    """Check a whole run config; raises :class:`ConfigError` listing every problem found.

    ``world_size`` is the data-parallel size used for the batch arithmetic (unknown: only the
    checks that do not need it; run :meth:`RunConfig.check_world_size` once it is known).
    """
    errors: list[str | Problem] = []
    resolved = copy.deepcopy(cfg)
    ds = copy.deepcopy(cfg)
    ds.pop("trainer", None)
    errors += check_top_level(cfg)
    errors += check_batch(cfg, world_size)
    errors += check_precision(cfg)
    stage, zero_errors = zero_stage(cfg)
    errors += zero_errors

    optimizer, factory, opt_errors = optimizer_section(cfg, stage)
    errors += opt_errors
    if optimizer is not None:
        ds.pop("optimizer", None)
        errors += zero_switches(ds, stage, optimizer.type)
    scheduler, probe, sched_errors = scheduler_section(cfg, stage)
    errors += sched_errors
    if scheduler is not None:
        ds.pop("scheduler", None)
    elif probe is not None:  # probe.every with a scheduler DeepSpeed builds: not its argument
        ds["scheduler"]["params"].pop("probe", None)
    trainer, trainer_errors = trainer_section(cfg, probe)
    errors += trainer_errors
    if trainer is not None and trainer.margins_every and stage == 3:
        errors.append(
            Problem(
                "trainer.margins_every",
                "rank 0 measures margins alone, which deadlocks under zero_optimization.stage 3; "
                "set it to 0 or use stage 0-2",
            )
        )
    if errors:
        raise ConfigError(errors)
    run = RunConfig(
        deepspeed=ds,
        resolved=resolved,
        optimizer=optimizer,
        optimizer_factory=factory,
        scheduler=scheduler,
        probe=probe,
        trainer=trainer,
    )
    if world_size is not None:
        run.check_world_size(world_size)
    else:
        # The world size is unknown, but a train_batch_size given outright is the global batch.
        train = cfg.get("train_batch_size")
        problem = _train_size_problem(trainer, train) if isinstance(train, int) else None
        if problem:
            raise ConfigError(problem)
    return run


def _train_size_problem(trainer: TrainerConfig | None, batch: int) -> Problem | None:
    """One global batch must fit in the training split (the trainer's sampler drops the rest),
    else an epoch has no optimizer step. Checked when the split's size is known up front."""
    if trainer is None:
        return None
    train_size = trainer.dataset.resolved_sizes()[0]
    if train_size is None:  # a real dataset used whole: its size is known only once it is read
        return None
    held = trainer.dataset.val_size  # held-out validation samples are not trained on
    train_size -= held
    if train_size >= batch:
        return None
    given = "" if trainer.dataset.train_size is not None else " (the dataset's default)"
    if held:
        given += f" left after val_size {held}"
    return no_step_problem(
        train_size, batch, batch + held, key="trainer.dataset.train_size", given=given
    )
