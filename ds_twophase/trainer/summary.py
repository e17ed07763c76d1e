"""``summary.json``: one run's outcome in one small file, built from its ``metrics.jsonl`` rows.

:func:`build_summary` is pure (rows and config in, a dict out), so tools can rebuild a summary
from a run directory alone; the trainer writes it after the last epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from ..epoch_row import schedule_events

__all__ = ["build_summary", "commit_info", "config_fingerprint", "indices_digest"]

SUMMARY_NAME = "summary.json"


def config_fingerprint(fingerprint: dict[str, Any]) -> str:
    """SHA-256 of a config's resume fingerprint (its leaves minus bookkeeping keys, see
    ``resume.resume_fingerprint``): two runs with the same hash trained the same config."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def indices_digest(indices: list[int] | None) -> str | None:
    """Short SHA-256 of a list of sample indices (``None`` stays ``None``)."""
    if indices is None:
        return None
    return hashlib.sha256(json.dumps(list(indices)).encode()).hexdigest()[:16]


def commit_info(*dirs: Path | str) -> tuple[str | None, bool | None]:
    """``(commit hash, tree has uncommitted changes)`` of the first of ``dirs`` inside a git
    work tree; ``(None, None)`` when none is (or git is missing)."""
    for d in dirs:
        try:
            head = subprocess.run(
                ["git", "-C", str(d), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if head.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "-C", str(d), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip(), dirty
    return None, None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def build_summary(
    rows: list[dict[str, Any]],
    resolved: dict[str, Any],
    fingerprint: dict[str, Any],
    *,
    commit: str | None = None,
    commit_dirty: bool | None = None,
    val_indices: list[int] | None = None,
) -> dict[str, Any]:
    """The summary of a finished run from its ``metrics.jsonl`` rows and resolved config.

    ``fingerprint`` is the config's resume fingerprint (hashed into ``config_fingerprint``).
    With ``trainer.dataset.val_size`` 0 the validation split is the test split, so the test
    numbers are the last epoch's ``val_*`` and ``val_is_test`` is true. ``best_val_accuracy``
    is the best evaluated epoch's value (``best_val_epoch`` says which). Plateau, switch and
    decays come from :func:`ds_twophase.epoch_row.schedule_events`; ``switch_forced`` is the
    switch row's own record (``None`` for rows written before it had one).
    """
    last = rows[-1] if rows else {}
    val_size = int(resolved.get("trainer", {}).get("dataset", {}).get("val_size", 0) or 0)
    if "test_accuracy" in last:
        test_acc, test_loss = last.get("test_accuracy"), last.get("test_loss")
    else:
        test_acc, test_loss = last.get("val_accuracy"), last.get("val_loss")
    evaluated = [r for r in rows if _number(r.get("val_accuracy")) is not None]
    best = max(evaluated, key=lambda r: r["val_accuracy"], default=None)

    # Schedule events: two-phase and WarmupStepLR rows have decisions, others write None.
    events = schedule_events(rows)
    two_phase = events.decided

    probe = sum(_number(r.get("probe_seconds")) or 0.0 for r in rows)
    wall = sum(_number(r.get("epoch_seconds")) or 0.0 for r in rows)
    return {
        "epochs": last.get("epoch", 0),
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "val_size": val_size,
        "val_is_test": val_size == 0,
        "best_val_accuracy": None if best is None else best["val_accuracy"],
        "best_val_epoch": None if best is None else best["epoch"],
        "final_val_accuracy": last.get("val_accuracy"),
        "plateau_epoch": events.plateau,
        "switch_epoch": events.switch,
        "switch_forced": events.switch_forced,
        "ended_in_exploration": (last.get("phase") == "exploration") if two_phase else None,
        "decay_epochs": events.decays if events.decided else [],
        "final_lr": last.get("lr"),
        "probe_seconds": probe,
        "wall_seconds": wall,
        "probe_share": probe / wall if wall > 0 else None,
        "commit": commit,
        "commit_dirty": commit_dirty,
        "config_fingerprint": config_fingerprint(fingerprint),
        "val_indices_digest": indices_digest(val_indices),
    }
