"""Reading a run directory: ``config.json``, ``metrics.jsonl`` and ``summary.json`` if present."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, is_number

# Drops of at least this fraction in one epoch count as decays for schedulers that record no
# decisions (DeepSpeed's built-in ones); a smooth schedule (cosine) loses far less per epoch.
INFERRED_DECAY_DROP = 0.1


@dataclass
class Events:
    """The epochs a run's schedule marked (all 1-based, as in ``metrics.jsonl``)."""

    plateau: int | None = None
    """First epoch whose decision was ``plateau`` (or whose row has ``plateau: true``)."""
    switch: int | None = None
    """Epoch at whose end the run switched to the convergence phase."""
    decays: list[int] = field(default_factory=list)
    """Epochs whose decision cut the LR (``decay``); a ``floor`` (no-op at min_lr) is not one."""
    floors: list[int] = field(default_factory=list)
    """Epochs whose decay was a no-op because the LR was already at ``min_lr``."""
    inferred: bool = False
    """True when no decisions were recorded and ``decays`` was read from LR drops instead."""


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    """The run directory."""
    config: dict[str, Any]
    """The resolved config (``config.json``)."""
    rows: list[dict[str, Any]]
    """``metrics.jsonl``: one dict per epoch, in file order."""
    summary: dict[str, Any] | None = None
    """``summary.json`` when the trainer wrote one (finished runs), else ``None``."""

    @property
    def seed(self) -> Any:
        """``trainer.seed`` (0 when absent, the trainer's default)."""
        return self.config.get("trainer", {}).get("seed", 0)

    @property
    def setting(self) -> str:
        """A short name for the method: optimizer and scheduler types, e.g. ``LARS + TwoPhaseLR``."""
        parts = [
            str(self.config.get(section, {}).get("type", ""))
            for section in ("optimizer", "scheduler")
        ]
        return " + ".join(p for p in parts if p) or "default"

    @property
    def label(self) -> str:
        """Legend label: setting and seed."""
        return f"{self.setting}, seed {self.seed}"

    @property
    def events(self) -> Events:
        """Plateau, switch and decay epochs from the rows' decisions (see :class:`Events`)."""
        return events_of(self.rows)

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of the rows where ``key`` has a number (nulls are skipped)."""
        epochs, values = [], []
        for row in self.rows:
            value = row.get(key)
            if is_number(value):
                epochs.append(int(row["epoch"]))
                values.append(float(value))
        return epochs, values

    def final(self, key: str) -> float | None:
        """The last non-null value of ``key`` in the rows."""
        _, values = self.column(key)
        return values[-1] if values else None


def events_of(rows: list[dict[str, Any]]) -> Events:
    """Read the schedule's marks from ``metrics.jsonl`` rows."""
    ev = Events()
    decided = False
    for row in rows:
        decision, epoch = row.get("decision"), int(row["epoch"])
        decided = decided or decision is not None
        if ev.plateau is None and (decision == "plateau" or row.get("plateau") is True):
            ev.plateau = epoch
        if decision == "switch" and ev.switch is None:
            ev.switch = epoch
        elif decision == "decay":
            ev.decays.append(epoch)
        elif decision == "floor":
            ev.floors.append(epoch)
    if not decided:
        ev.decays = _lr_drops(rows)
        ev.inferred = bool(ev.decays)
    return ev


def _lr_drops(rows: list[dict[str, Any]]) -> list[int]:
    drops, previous = [], None
    for row in rows:
        lr = row.get("lr")
        if not isinstance(lr, (int, float)):
            continue
        if previous is not None and lr < previous * (1 - INFERRED_DECAY_DROP):
            drops.append(int(row["epoch"]))
        previous = lr
    return drops


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_run(path: str | Path) -> Run:
    """Read a run directory; a missing or unreadable file is one :class:`ConfigError` line."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a run directory (expected the trainer's output_dir)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{path}: no metrics.jsonl; is this a ds_twophase output_dir?")
    rows = []
    lines = metrics.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write leaves a partial last line: skip it, keep the rest.
            if number < len(lines):
                raise ConfigError(f"{metrics}: line {number} is not valid JSON") from None
    config_path = path / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    summary_path = path / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else None
    return Run(path=path, config=config, rows=rows, summary=summary)
