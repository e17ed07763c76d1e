"""The config keys that leave training unchanged: one list, read by ``--resume`` (a checkpoint
resumes under a config that differs only in these) and by ``ds-twophase report`` (runs that differ
only in these are one setting)."""

from __future__ import annotations

from typing import Any

TRAINING_FREE_KEYS = (
    "trainer.output_dir",
    "trainer.checkpoint_every",
    "trainer.checkpoint_minutes",
    "trainer.collective_timeout_minutes",
    "trainer.keep_checkpoints",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.eval_every",
    "trainer.on_nonfinite_loss",
    "trainer.margins_every",  # measurements for analysis only: training is the same
    "scheduler.params.probe.every",
    "trainer.dataset.root",
    "steps_per_print",
    "wall_clock_breakdown",
    "tensorboard",
    "csv_monitor",
    "wandb",
    "comet",
    "flops_profiler",
)
"""Flattened config keys (``a.b.c``) that may differ without changing what is trained; a key
names its whole subtree (``tensorboard`` covers ``tensorboard.enabled``)."""


def is_training_free(key: str) -> bool:
    """Whether the flattened config key ``key`` is, or lies under, one of
    :data:`TRAINING_FREE_KEYS`."""
    return any(key == free or key.startswith(free + ".") for free in TRAINING_FREE_KEYS)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested config (lists and empty objects are
    leaves, kept whole)."""
    if isinstance(cfg, dict) and cfg:
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): cfg}


def training_leaves(resolved: dict[str, Any]) -> dict[str, Any]:
    """The flattened config's leaves that define what is trained (all but the
    :data:`TRAINING_FREE_KEYS`): what a resume compares and what groups runs in a report."""
    return {key: value for key, value in flatten(resolved).items() if not is_training_free(key)}
