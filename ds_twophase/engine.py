"""``ds_twophase.initialize``: ``deepspeed.initialize`` that understands our JSON types.

DeepSpeed has no registry for custom optimizer or scheduler names, so this reads the JSON,
validates it, builds factories for the types ds_twophase owns (``optimizer=callable(params)``,
``lr_scheduler=callable(optimizer)``), removes those sections and the ``trainer`` section, and
hands everything else to DeepSpeed unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import dist
from .accelerator import select_cpu_accelerator
from .config import Batch, RunConfig, load_config, validate_config
from .errors import ConfigError
from .schedulers import SCHEDULERS, EpochScheduler

select_cpu_accelerator()  # before DeepSpeed's first import: no accelerator warnings on CPU

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.constants import TORCH_DISTRIBUTED_DEFAULT_PORT  # noqa: E402


def initialize(
    args: Any = None,
    model: torch.nn.Module | None = None,
    optimizer: Any = None,
    model_parameters: Any = None,
    training_data: torch.utils.data.Dataset | None = None,
    lr_scheduler: Any = None,
    distributed_port: int = TORCH_DISTRIBUTED_DEFAULT_PORT,
    mpu: Any = None,
    dist_init_required: bool | None = None,
    collate_fn: Callable | None = None,
    config: str | Path | dict[str, Any] | None = None,
    mesh_param: Any = None,
    config_params: str | Path | dict[str, Any] | None = None,
    *,
    total_epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> tuple[Any, Any, Any, Any]:
    """Drop-in for ``deepspeed.initialize`` (same arguments, same return value).

    ``config`` may be a path or a dict (or come from ``args.deepspeed_config``). Sections naming
    ds_twophase types (``"optimizer": {"type": "LARS"}``, ``"scheduler": {"type": "TwoPhaseLR" |
    "WarmupStepLR"}``) are built here; everything else is DeepSpeed's. For our schedulers,
    ``total_epochs`` and ``steps_per_epoch`` come from the JSON params, else from these
    arguments, else ``trainer.epochs`` and the length of ``training_data`` with the batch sizes.

    The validated :class:`~ds_twophase.config.RunConfig` is attached to the engine as
    ``engine.twophase_config``. Raises :class:`ConfigError` for invalid input.
    """
    if model is None:
        raise ConfigError(key="initialize", problem="model is required")
    if config is None:
        config = config_params
    if config is None and getattr(args, "deepspeed_config", None) is not None:
        config = args.deepspeed_config
        args = copy.copy(args)
        args.deepspeed_config = None  # we hand DeepSpeed the cleaned dict instead
    if config is None:
        raise ConfigError(
            key="config", problem="pass config= (a JSON path or a dict) or args.deepspeed_config"
        )
    raw = load_config(config)
    dist.init_process_group(
        distributed_port=distributed_port, dist_init_required=dist_init_required
    )
    world = mpu.get_data_parallel_world_size() if mpu is not None else dist.get_world_size()
    run = validate_config(raw, world_size=world)
    return initialize_run(
        run,
        args=args,
        model=model,
        optimizer=optimizer,
        model_parameters=model_parameters,
        training_data=training_data,
        lr_scheduler=lr_scheduler,
        distributed_port=distributed_port,
        mpu=mpu,
        dist_init_required=dist_init_required,
        collate_fn=collate_fn,
        mesh_param=mesh_param,
        total_epochs=total_epochs,
        steps_per_epoch=steps_per_epoch,
    )


def initialize_run(
    run: RunConfig,
    *,
    model: torch.nn.Module,
    optimizer: Any = None,
    lr_scheduler: Any = None,
    training_data: torch.utils.data.Dataset | None = None,
    total_epochs: int | None = None,
    steps_per_epoch: int | None = None,
    mpu: Any = None,
    **deepspeed_kwargs: Any,
) -> tuple[Any, Any, Any, Any]:
    """:func:`initialize` for an already validated :class:`RunConfig` (the trainer's path).

    Reuses what validation built: the optimizer factory, bound here to ``model``, and the
    scheduler's checked params; the batch arithmetic is checked for this world size (a no-op
    when validation already had it) and the probe settings against ``model``
    (``check_probe_model``)."""
    world = mpu.get_data_parallel_world_size() if mpu is not None else dist.get_world_size()
    batch = run.check_world_size(world)
    if run.probe is not None:  # the first place the model is known (trainer and initialize)
        from .probe import check_probe_model

        problem = check_probe_model(model, run.probe)
        if problem is not None:
            raise ConfigError(problem)
    if run.optimizer is not None:
        _refuse_both("optimizer", run.optimizer.type, optimizer, "an optimizer")
        if run.optimizer_factory is None:  # a RunConfig not made by validate_config
            from .optim import build_optimizer_factory

            run.optimizer_factory = build_optimizer_factory(
                run.optimizer.type, run.optimizer.params
            )
        # ZeRO-1/2 flatten each group, with collectives per group: LARS then gets one group
        optimizer = run.optimizer_factory.bind(model, partitioned=run.zero_stage in (1, 2))
    if run.scheduler is not None:
        _refuse_both("scheduler", run.scheduler.type, lr_scheduler, "lr_scheduler")
        lr_scheduler = scheduler_factory(
            run,
            total_epochs=total_epochs,
            steps_per_epoch=steps_per_epoch,
            num_samples=None if training_data is None else len(training_data),  # type: ignore[arg-type]
            batch=batch,
        )
    engine, opt, loader, sched = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        training_data=training_data,
        lr_scheduler=lr_scheduler,
        mpu=mpu,
        config=run.deepspeed,
        **deepspeed_kwargs,
    )
    engine.twophase_config = run
    return engine, opt, loader, sched


def scheduler_factory(
    run: RunConfig,
    *,
    total_epochs: int | None,
    steps_per_epoch: int | None,
    num_samples: int | None,
    batch: Batch,
) -> Callable[[torch.optim.Optimizer], EpochScheduler]:
    """A ``callable(optimizer)`` building the config's scheduler with resolved epoch lengths."""
    if run.scheduler is None:
        raise ValueError("scheduler_factory: the config names no ds_twophase scheduler")
    params = dict(run.scheduler.params)
    trainer_epochs = run.trainer.epochs if run.trainer is not None else None
    params["total_epochs"] = _pick(
        "total_epochs",
        params.get("total_epochs"),
        total_epochs,
        trainer_epochs,
        fix="write it in scheduler.params, pass total_epochs= or set trainer.epochs",
    )
    derived = None
    if num_samples is not None:
        derived = steps_per_epoch_for(run.deepspeed, num_samples, batch)
    params["steps_per_epoch"] = _pick(
        "steps_per_epoch",
        params.get("steps_per_epoch"),
        steps_per_epoch,
        derived,
        fix="write it in scheduler.params, pass steps_per_epoch= or training_data=",
    )
    cls = SCHEDULERS[run.scheduler.type]

    def build(optimizer: torch.optim.Optimizer) -> EpochScheduler:
        try:
            return cls(optimizer, **params)
        except ConfigError as exc:  # keyed by argument name
            raise exc.under("scheduler.params.") from None
        except ValueError as exc:
            raise ConfigError(key="scheduler.params", problem=str(exc)) from None

    return build


def steps_per_epoch_for(ds_config: dict[str, Any], num_samples: int, batch: Batch) -> int:
    """Optimizer steps per epoch with DeepSpeed's own loader over ``num_samples`` samples.

    DeepSpeed's DistributedSampler pads every rank to ``ceil(N / ranks)`` samples; its loader
    keeps the last partial micro-batch unless ``dataloader_drop_last``; the engine steps once per
    ``gradient_accumulation_steps`` micro-batches.
    """
    drop_last = bool(ds_config.get("dataloader_drop_last", False))
    return batch.require_steps(num_samples, pad=True, drop_last=drop_last, key="train_batch_size")


def load_checkpoint(
    engine: Any, load_dir: str | Path, tag: str | None = None, **kwargs: Any
) -> Any:
    """``engine.load_checkpoint`` that leaves our scheduler's LR in force afterwards.

    Under ZeRO the optimizer partition is loaded after the scheduler and writes its own saved LR
    into the param groups; this re-applies the scheduler's LR on every rank.
    """
    result = engine.load_checkpoint(str(load_dir), tag=tag, **kwargs)
    if isinstance(engine.lr_scheduler, EpochScheduler):
        engine.lr_scheduler.apply_lr()
    return result


def _refuse_both(section: str, type_name: str, passed: Any, what: str) -> None:
    """A component named in the config and also passed to ``initialize()`` is one too many."""
    if passed is not None:
        raise ConfigError(
            key=f"{section}.type",
            problem=f"'{type_name}' is in the config and {what} was passed to initialize(); "
            "remove one of them",
        )


def _pick(name: str, from_json: Any, from_arg: Any, derived: Any, *, fix: str) -> Any:
    if from_json is not None and from_arg is not None and from_json != from_arg:
        raise ConfigError(
            key=f"scheduler.params.{name}",
            problem=f"{from_json} in the config but {from_arg} passed to initialize(); keep one",
        )
    for value in (from_json, from_arg, derived):
        if value is not None:
            return value
    raise ConfigError(key=f"scheduler.params.{name}", problem=f"unknown; {fix}")
