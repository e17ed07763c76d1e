"""Resuming a run: which checkpoint, whether the config still matches it, and the guard that
keeps a new run from writing over an old one.

A checkpoint stores :func:`resume_fingerprint` of the resolved config; a resume compares it with
the current config's and refuses (one :class:`~ds_twophase.errors.ConfigError` line naming the
changed keys) unless only :data:`RESUME_FREE_KEYS` changed. These functions read files only rank
0 may see: the trainer runs them on rank 0 and broadcasts the outcome (``dist.on_rank_zero``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.free_keys import TRAINING_FREE_KEYS, training_leaves
from ..errors import ConfigError
from . import checkpoint
from .metrics import MetricsLog

Choice = tuple[int, str, dict[str, Any]]
"""``(epoch, checkpoint directory, saved state with its tensors under "tensors")``
(:func:`ds_twophase.trainer.checkpoint.read`)."""


RESUME_FREE_KEYS = TRAINING_FREE_KEYS
"""The keys a resumed run may change: the one list of keys that leave training unchanged."""


def resume_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The config leaves that must not change when a run is resumed."""
    return training_leaves(resolved)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable ``key: old -> new`` for every key that differs."""
    keys = sorted(set(saved) | set(now))
    missing = object()
    out = []
    for key in keys:
        a, b = saved.get(key, missing), now.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(a)} -> {show(b)}")
    return out


def choose_checkpoint(
    target: str,
    ckpt_dir: Path,
    metrics: MetricsLog,
    resolved: dict[str, Any],
    *,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> Choice | None:
    """The checkpoint ``--resume target`` names (``auto``: the newest complete one in
    ``ckpt_dir``; ``None`` when there is none yet), checked against the current config
    ``resolved``. Raises :class:`ConfigError` for a missing, incomplete or mismatched one."""
    if target == "auto":
        found = checkpoint.scan(ckpt_dir, verify=True)
        for skipped in found.skipped:
            warn(skipped.line())
        if found.newest is None:
            if found.skipped:
                newest = found.skipped[0]
                damaged = any(skipped.damaged for skipped in found.skipped)
                fix = "restore the damaged file, or " if damaged else ""
                raise ConfigError(
                    f"--resume: no complete checkpoint in {ckpt_dir} reads back intact (the "
                    f"newest: checkpoint {newest.path} {newest.problem}); {fix}remove the "
                    "directory to start over"
                )
            done = len(metrics.read())
            dropped = f" (the {done} epoch(s) in metrics.jsonl are trained again)" if done else ""
            log(f"resume: no checkpoint in {ckpt_dir}; starting from scratch{dropped}")
            return None
        epoch, path = found.newest
        state = checkpoint.read(path)
    else:
        path = Path(target)
        if not checkpoint.is_complete(path):
            raise ConfigError(
                f"--resume: '{target}' is not a complete ds_twophase checkpoint directory"
            )
        problem = checkpoint.unreadable(path)
        if problem is not None:
            raise ConfigError(
                f"--resume: checkpoint {path} is unreadable ({problem}); resume from an older "
                "checkpoint with --resume PATH or --resume auto"
            )
        state = checkpoint.read(path)
        epoch = state["epoch"]
    changes = config_changes(state.get("config", {}), resume_fingerprint(resolved))
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise ConfigError(
            f"--resume: the config changed since {path.name}: {'; '.join(changes[:3])}{more}; "
            "restore these values or train into a new trainer.output_dir"
        )
    return epoch, str(path), state


def check_fresh_output_dir(out: Path, metrics: MetricsLog, ckpt_dir: Path) -> None:
    """Refuse to start a new run over an existing one (nothing is ever overwritten)."""
    if metrics.read() or checkpoint.checkpoint_dirs(ckpt_dir):
        raise ConfigError(
            f"trainer.output_dir: '{out}' already holds a run; continue it with "
            "--resume auto, or choose another output_dir"
        )
