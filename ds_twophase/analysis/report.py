"""``ds-twophase report``: runs grouped by config (all seeds together), one table row per group.

Runs whose resolved configs (``config.json``) are equal once the seed and the keys that leave
training unchanged (``config.free_keys``: output directory, checkpoint cadence, evaluation and
analysis cadence, logging, monitors) are removed form one group;
each row gives the mean and sample std over the group's runs, like the paper's Tables 2 to 5.
Per-run numbers come from ``summary.json`` when the trainer wrote one, else from
``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config.free_keys import flatten, training_leaves
from .runs import Run
from .stats import format_mean_std, mean_std

IGNORED_KEYS = ("trainer.seed",)
"""Keys report ignores on top of the shared list of keys that leave training unchanged
(:data:`ds_twophase.config.free_keys.TRAINING_FREE_KEYS`, the list ``--resume`` uses): the seed,
since a group is all seeds of one setting."""


def group_key(config: dict[str, Any]) -> str:
    """The part of a config that defines a setting, as a canonical JSON string."""
    flat = {k: v for k, v in training_leaves(config).items() if k not in IGNORED_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs grouped by :func:`group_key`, groups in order of first appearance, runs by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run.config), []).append(run)
    return [sorted(g, key=lambda r: str(r.seed)) for g in groups.values()]


@dataclass
class RunNumbers:
    """What the table needs from one run."""

    val_accuracy: float | None
    """Validation accuracy after the last epoch."""
    test_accuracy: float | None
    """``summary.json``'s test accuracy (``None`` without a summary)."""
    best_val_accuracy: float | None
    """Best validation accuracy of any epoch (``summary.json``'s ``best_val_accuracy``)."""
    decay_epochs: list[int]
    """Epochs whose decision decayed the LR."""
    switch_epoch: int | None
    """Epoch of the phase switch (two-phase runs)."""


def run_numbers(run: Run) -> RunNumbers:
    """Per-run numbers, from ``summary.json`` where it has them, else from ``metrics.jsonl``."""
    summary = run.summary or {}
    events = run.events
    _, accs = run.column("val_accuracy")
    decays = summary.get("decay_epochs")
    return RunNumbers(
        val_accuracy=run.final("val_accuracy"),
        test_accuracy=summary.get("test_accuracy"),
        best_val_accuracy=summary.get("best_val_accuracy", max(accs) if accs else None),
        decay_epochs=list(events.decays if decays is None else decays),
        switch_epoch=summary.get("switch_epoch", events.switch),
    )


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _policy(config: dict[str, Any]) -> tuple[str, bool]:
    sched = config.get("scheduler", {})
    params = sched.get("params", {})
    kind = sched.get("type")
    if kind == "TwoPhaseLR":
        return f"adaptive (β = {_number(params.get('decay_factor', 0.5))})", True
    if kind == "WarmupStepLR":
        return f"step-wise (β = {_number(params.get('gamma', 0.1))})", False
    return (kind or "constant"), False


def _decay_column(
    numbers: list[RunNumbers], adaptive: bool
) -> tuple[str, float | None, float | None]:
    firsts = [n.decay_epochs[0] for n in numbers if n.decay_epochs]
    if not firsts:
        return "-", None, None
    mean, std = mean_std(firsts)
    lists = {tuple(n.decay_epochs) for n in numbers}
    if not adaptive and len(lists) == 1:
        return "/".join(str(e) for e in next(iter(lists))), mean, std
    missing = len(numbers) - len(firsts)
    note = f", {missing} run(s) never decayed" if missing else ""
    return f"adaptive ({mean:.0f} ± {std:.0f}{note})", mean, std


COLUMNS = (
    "Setting",
    "Runs",
    "Batch size",
    "LR",
    "LR decay policy",
    "Decay epochs",
    "LARS coefficient",
    "Val. acc. (final)",
    "Test acc.",
    "Best final val. acc.",
)
"""Markdown columns; accuracies in percent as mean ± sample std over the group's runs."""


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per group with both display strings (:data:`COLUMNS`) and raw numbers.

    Raw numbers use snake_case keys (``val_accuracy_mean``, ``first_decay_std``, ...) and
    fractions (not percent) for accuracies; ``best_final_val_accuracy`` is the highest final
    validation accuracy among the group's runs, ``best_val_accuracy_mean`` the mean over the runs
    of each run's best epoch's validation accuracy (``summary.json``'s ``best_val_accuracy``).
    """
    groups = group_runs(runs)
    names = [g[0].setting for g in groups]
    flats = [flatten(json.loads(group_key(g[0].config))) for g in groups]
    rows = []
    for group, name, flat in zip(groups, names, flats, strict=True):
        if names.count(name) > 1:  # same method, other hyperparameters: name what differs
            others = [f for f, n in zip(flats, names, strict=True) if n == name and f is not flat]
            diff = sorted(k for k in flat if any(o.get(k) != flat[k] for o in others))
            parts = [f"{k.rsplit('.', 1)[-1]}={flat[k]}" for k in diff[:3]]
            name = f"{name} ({', '.join(parts)})"
        config = group[0].config
        numbers = [run_numbers(run) for run in group]
        policy, adaptive = _policy(config)
        decay, first_mean, first_std = _decay_column(numbers, adaptive)
        opt = config.get("optimizer", {})
        lars = opt.get("params", {}).get("trust_coefficient") if opt.get("type") == "LARS" else None
        vals = [n.val_accuracy for n in numbers if n.val_accuracy is not None]
        tests = [n.test_accuracy for n in numbers if n.test_accuracy is not None]
        val_mean, val_std = mean_std(vals) if vals else (None, None)
        test_mean, test_std = mean_std(tests) if tests else (None, None)
        best = max(vals) if vals else None
        bests = [n.best_val_accuracy for n in numbers if n.best_val_accuracy is not None]
        rows.append(
            {
                "Setting": name,
                "Runs": len(group),
                "Batch size": _number(config.get("train_batch_size")),
                "LR": _number(opt.get("params", {}).get("lr")),
                "LR decay policy": policy,
                "Decay epochs": decay,
                "LARS coefficient": _number(lars),
                "Val. acc. (final)": format_mean_std(vals, scale=100) + ("%" if vals else ""),
                "Test acc.": format_mean_std(tests, scale=100) + ("%" if tests else ""),
                "Best final val. acc.": "-" if best is None else f"{100 * best:.2f}%",
                "seeds": [run.seed for run in group],
                "first_decay_mean": first_mean,
                "first_decay_std": first_std,
                "val_accuracy_mean": val_mean,
                "val_accuracy_std": val_std,
                "test_accuracy_mean": test_mean,
                "test_accuracy_std": test_std,
                "best_final_val_accuracy": best,
                "best_val_accuracy_mean": mean_std(bests)[0] if bests else None,
            }
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table in Markdown (display strings)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    ("setting", "Setting"),
    ("runs", "Runs"),
    ("seeds", "seeds"),
    ("batch_size", "Batch size"),
    ("lr", "LR"),
    ("decay_policy", "LR decay policy"),
    ("decay_epochs", "Decay epochs"),
    ("first_decay_mean", "first_decay_mean"),
    ("first_decay_std", "first_decay_std"),
    ("lars_coefficient", "LARS coefficient"),
    ("val_accuracy_mean", "val_accuracy_mean"),
    ("val_accuracy_std", "val_accuracy_std"),
    ("test_accuracy_mean", "test_accuracy_mean"),
    ("test_accuracy_std", "test_accuracy_std"),
    ("best_final_val_accuracy", "best_final_val_accuracy"),
    ("best_val_accuracy_mean", "best_val_accuracy_mean"),
)
"""CSV header -> row key; numbers unrounded, accuracies as fractions."""


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The table as CSV with raw numbers (empty cell for a missing value)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([header for header, _ in CSV_COLUMNS])
    for row in rows:
        cells = []
        for _, key in CSV_COLUMNS:
            value = row[key]
            if key == "seeds":
                value = " ".join(str(s) for s in value)
            cells.append("" if value is None or value == "-" else value)
        writer.writerow(cells)
    return out.getvalue()
