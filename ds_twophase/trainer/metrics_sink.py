"""Where a run's per-epoch rows and run files go, chosen once per rank.

Rank 0 gets a :class:`RankZeroSink`: it writes ``config.json``, appends each row to
``metrics.jsonl`` and sends it to DeepSpeed's monitor (TensorBoard, CSV, W&B, Comet). Every other
rank gets a :class:`NullSink` that does nothing, so the trainer calls the sink on every rank and
never asks which rank it is to log (the model: torchtitan's per-rank metrics processor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from .. import dist
from . import checkpoint
from .metrics import MetricsLog
from .monitor_events import MonitorEvents

__all__ = ["MetricsSink", "NullSink", "RankZeroSink", "metrics_sink"]


class MetricsSink(Protocol):
    """What the trainer asks of the rank it runs on about its run files."""

    def resumed(self, epoch: int) -> None:
        """A resume continues after ``epoch`` (0: from the start): drop the rows of later
        epochs, which are trained again."""

    def start(self, epoch: int, resolved: dict[str, Any]) -> None:
        """Before training epoch ``epoch + 1`` (0 for a fresh run): trim the monitor's files to
        ``epoch`` and write the run's resolved config."""

    def write(self, row: dict[str, Any]) -> None:
        """Record one epoch's row."""


class NullSink:
    """The sink of every rank but 0: records nothing."""

    def resumed(self, epoch: int) -> None:
        """Nothing to do on this rank."""

    def start(self, epoch: int, resolved: dict[str, Any]) -> None:
        """Nothing to do on this rank."""

    def write(self, row: dict[str, Any]) -> None:
        """Nothing to do on this rank."""


class RankZeroSink:
    """Rank 0's sink: ``metrics.jsonl``, ``config.json`` and DeepSpeed's monitor. A failed
    write stops the run with one line (:func:`ds_twophase.trainer.checkpoint.stop_on_write_error`).

    Args:
        log: the run's ``metrics.jsonl``.
        monitor: DeepSpeed's monitor for the engine (a no-op without a backend).
        ckpt_dir: the run's checkpoint directory (named in a failed write's message).
    """

    def __init__(self, log: MetricsLog, monitor: MonitorEvents, ckpt_dir: Path) -> None:
        self.log = log
        self.monitor = monitor
        self.ckpt_dir = ckpt_dir

    def resumed(self, epoch: int) -> None:
        """Keep the rows of epochs up to ``epoch`` (those no checkpoint kept are trained again)."""
        self.log.truncate(epoch)

    def start(self, epoch: int, resolved: dict[str, Any]) -> None:
        """Keep the monitor's CSV rows up to ``epoch`` and write ``config.json`` next to
        ``metrics.jsonl`` (call it once the run's checks passed: a refused run must not
        overwrite an existing run's file)."""
        self.monitor.start(epoch)  # CSV monitor files: no second header, no re-trained epochs
        config = self.log.path.parent / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        with checkpoint.stop_on_write_error(str(config), self.ckpt_dir):
            checkpoint.write_text_atomic(config, json.dumps(resolved, indent=2) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` to ``metrics.jsonl`` and send it to the monitor."""
        with checkpoint.stop_on_write_error(
            f"{self.log.path} (epoch {row['epoch']})", self.ckpt_dir
        ):
            self.log.append(row)
            self.monitor.write(row)


def metrics_sink(log: MetricsLog, engine: Any, ckpt_dir: Path) -> MetricsSink:
    """This rank's sink: :class:`RankZeroSink` on rank 0, else :class:`NullSink`."""
    if dist.is_rank_zero():
        return RankZeroSink(log, MonitorEvents(engine), ckpt_dir)
    return NullSink()
