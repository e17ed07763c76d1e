"""Our per-epoch metrics through DeepSpeed's monitor (TensorBoard, CSV, W&B, Comet).

When the DeepSpeed JSON enables a monitor backend (``tensorboard``, ``csv_monitor``, ``wandb``
or ``comet`` with ``"enabled": true``), DeepSpeed builds ``engine.monitor`` (its
``MonitorMaster``; ``monitor.enabled`` is true when any backend is) on rank 0, and the trainer
writes each metrics row to it as ``(tag, value, epoch)`` events: the tags of :data:`TAGS`,
numbers only, the epoch as the step. Strings are encoded: :data:`PHASE_CODES` and
:data:`DECISION_CODES`. A value that is ``None`` in the row (no probe this epoch, no evaluation)
is not written.

Resume: DeepSpeed's CSV monitor appends to ``<output_path>/<job_name>/<tag>.csv`` and writes a
header the first time each process writes a file, so a resumed run would add a second header,
and the epochs trained again after the checkpoint a second row. :meth:`MonitorEvents.start`
therefore rewrites, before the first epoch, our CSV files to one header and the rows of epochs
up to the start epoch, DeepSpeed's own ``Train_Samples_*`` files to the rows up to the
engine's restored sample count, and tells the CSV monitor that those headers exist. Other
backends are append-only: TensorBoard gets a new event file per process, so an epoch trained
again after a resume (one after the newest checkpoint) is logged again: TensorBoard's reader
returns both events at that step, the resumed run's with the later wall time (on one CPU the
values are equal; tests/test_tensorboard.py). W&B starts a new run.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path
from typing import Any

from .. import epoch_row
from ..errors import ConfigError, Problem
from . import checkpoint

TAG_PREFIX = "ds_twophase/"
"""Prefix of every tag we write."""

SCALARS = epoch_row.SCALARS
"""``metrics.jsonl`` columns written as they are (``ds_twophase/<column>``): those
:data:`ds_twophase.epoch_row.COLUMNS` marks ``"scalar"``."""

PHASE_CODES = {"exploration": 0, "convergence": 1}
"""``ds_twophase/phase``: TwoPhaseLR's phase. Other schedulers (WarmupStepLR's constant
``"step"``, DeepSpeed's own) write no phase event."""

DECISION_CODES = {
    "skipped": -1,
    "none": 0,
    "plateau": 1,
    "switch": 2,
    "keep": 3,
    "floor": 4,
    "decay": 5,
}
"""``ds_twophase/decision``: the epoch's decision (see ``EpochRecord.decision``)."""

CODES = {"phase": PHASE_CODES, "decision": DECISION_CODES}
"""The codes of each column :data:`ds_twophase.epoch_row.COLUMNS` marks ``"code"``."""

TAGS = tuple(TAG_PREFIX + name for name in (*SCALARS, *epoch_row.CODED))
"""Every tag we may write, in event order."""

BACKEND_PACKAGES = {
    "tensorboard": ("tensorboard", 'pip install -e ".[tensorboard]"'),
    "wandb": ("wandb", 'pip install -e ".[wandb]"'),
    "comet": ("comet_ml", 'pip install "comet_ml>=3.41.0"'),
}
"""Monitor section -> (the package DeepSpeed imports for it, how to install it)."""

DEEPSPEED_CSV_PREFIX = "Train_Samples_"
"""DeepSpeed's own CSV files (``Train/Samples/...`` tags, step = samples trained)."""


def check_backends(ds_config: dict[str, Any]) -> None:
    """One :class:`ConfigError` line per enabled monitor backend whose package is missing
    (DeepSpeed would raise an ImportError traceback from rank 0 while building the engine)."""
    problems = []
    for section, (module, fix) in BACKEND_PACKAGES.items():
        cfg = ds_config.get(section)
        enabled = isinstance(cfg, dict) and cfg.get("enabled") is True
        if enabled and importlib.util.find_spec(module) is None:
            problems.append(
                Problem(
                    f"{section}.enabled",
                    f"the {module} package is not installed; {fix}, or set it to false",
                )
            )
    if problems:
        raise ConfigError(problems)


def row_events(row: dict[str, Any]) -> list[tuple[str, float, int]]:
    """The monitor events of one metrics row: ``(tag, value, epoch)``, ``None`` values left out."""
    epoch = int(row["epoch"])
    events = []
    for name in SCALARS:
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        events.append((TAG_PREFIX + name, float(value), epoch))
    for name in epoch_row.CODED:
        value = row.get(name)
        code = CODES[name].get(value) if isinstance(value, str) else None
        if code is not None:
            events.append((TAG_PREFIX + name, float(code), epoch))
    return events


def csv_file_name(tag: str) -> str:
    """The file DeepSpeed's CSV monitor writes ``tag`` to (its own naming rule)."""
    return tag.replace("/", "_").replace(" ", "_") + ".csv"


def trim_csv(path: Path, last_step: float) -> bool:
    """Rewrite a monitor CSV file to one header and the rows with ``step <= last_step``
    (repeated headers and later rows dropped). False when ``path`` is not such a file."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows or len(rows[0]) != 2 or rows[0][0] != "step":
        return False
    header, kept = rows[0], [rows[0]]
    for row in rows[1:]:
        if row == header or len(row) != 2:
            continue
        try:
            step = float(row[0])
        except ValueError:
            continue
        if math.isfinite(step) and step <= last_step:
            kept.append(row)
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    checkpoint.write_text_atomic(path, out.getvalue())
    return True


class MonitorEvents:
    """Writes metrics rows to ``engine.monitor`` (a no-op when no backend is on). Rank 0 only:
    the trainer's :func:`~ds_twophase.trainer.metrics_sink.metrics_sink` builds one there alone."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        monitor = getattr(engine, "monitor", None)
        self.monitor = monitor if monitor is not None and monitor.enabled else None

    @property
    def enabled(self) -> bool:
        """True when the DeepSpeed config enables a monitor backend."""
        return self.monitor is not None

    def start(self, epoch: int) -> None:
        """Before training epoch ``epoch + 1`` (0 for a fresh run): trim the CSV monitor's
        files to what the run being continued logged up to ``epoch`` (module docstring)."""
        csv_monitor = None if self.monitor is None else self.monitor.csv_monitor
        if csv_monitor is None or not csv_monitor.log_dir:
            return
        log_dir = Path(csv_monitor.log_dir)
        samples = float(getattr(self.engine, "global_samples", 0) or 0)
        ours = {csv_file_name(tag) for tag in TAGS}
        for path in sorted(log_dir.glob("*.csv")):
            if path.name in ours:
                bound = float(epoch)
            elif path.name.startswith(DEEPSPEED_CSV_PREFIX):
                bound = samples
            else:
                continue
            if trim_csv(path, bound) and path.stem not in csv_monitor.filenames:
                csv_monitor.filenames.append(path.stem)  # its header is there: not again

    def write(self, row: dict[str, Any]) -> None:
        """Write one metrics row's events."""
        if self.monitor is None:
            return
        events = row_events(row)
        if events:
            self.monitor.write_events(events)
