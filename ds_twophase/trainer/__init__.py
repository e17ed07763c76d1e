"""The trainer: one validated config trained end to end on every rank (``ds-twophase train``).

Public surface (what the CLI and the benches use): :class:`Trainer` (``Trainer(run).fit()``;
its ``train_epoch``, ``resume``, and the read-only ``config``, ``engine``, ``probe``,
``splits`` and ``checkpoint_parts``), :class:`RunResult`, :class:`TrainingStopped`,
:class:`Preempted` with :data:`EXIT_RESUMABLE`, :class:`StopFlag` and :class:`WriteFailed`.

Modules, one job each: ``trainer`` (build, fit), ``epoch`` (one training epoch), ``decide`` (the
epoch-end decision as metrics columns), ``evaluate``,
``epoch_analysis`` (``probe.every`` and margins), ``resume`` (which checkpoint, does the config
still match), ``preempt`` (signals, mid-epoch progress), ``checkpoint`` (the files and the map
of stateful parts), ``metrics`` and ``metrics_sink`` (``metrics.jsonl``, rank 0 only),
``monitor_events`` (DeepSpeed's monitor), ``summary`` (``summary.json``).
"""

from __future__ import annotations

from .checkpoint import WriteFailed
from .epoch import TrainingStopped
from .preempt import EXIT_RESUMABLE, Preempted, StopFlag
from .trainer import RunResult, Trainer

__all__ = [
    "EXIT_RESUMABLE",
    "Preempted",
    "RunResult",
    "StopFlag",
    "Trainer",
    "TrainingStopped",
    "WriteFailed",
]
