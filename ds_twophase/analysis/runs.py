"""Reading a run directory: ``config.json``, ``metrics.jsonl`` and ``summary.json`` if present."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..epoch_row import Events, schedule_events
from ..errors import ConfigError, is_number


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
        return schedule_events(self.rows)

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


events_of = schedule_events
"""The schedule's marks in rows (:func:`ds_twophase.epoch_row.schedule_events`)."""


def read_json(path: Path) -> Any:
    """The JSON file ``path`` of a run; invalid JSON is one :class:`ConfigError` line."""
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
    config = read_json(config_path) if config_path.is_file() else {}
    summary_path = path / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else None
    return Run(path=path, config=config, rows=rows, summary=summary)
