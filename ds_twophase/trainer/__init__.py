"""The trainer: one validated config trained end to end on every rank (``ds-twophase train``).

Public surface (what the CLI and the benches use): :class:`Trainer` (``Trainer(run).fit()``;
its ``train_epoch``, ``resume``, and the read-only ``config``, ``engine``, ``probe``,
``splits`` and ``checkpoint_parts``), :class:`RunResult`, :class:`TrainingStopped`,
:class:`Preempted` with :data:`EXIT_RESUMABLE`, :class:`StopFlag` and :class:`WriteFailed`;
the epoch's pieces a bench times on their own (``make_loader``, ``to_engine``,
``cross_entropy``) and the resume check's (``resume_fingerprint``, ``config_changes``).

Modules, one job each: ``trainer`` (build, fit), ``epoch`` (one training epoch), ``decide`` (the
epoch-end decision as metrics columns), ``evaluate``,
``epoch_analysis`` (``probe.every`` and margins), ``resume`` (which checkpoint, does the config
still match), ``preempt`` (signals, mid-epoch progress), ``checkpoint`` (the files and the map
of stateful parts), ``metrics`` and ``metrics_sink`` (``metrics.jsonl``, rank 0 only),
``monitor_events`` (DeepSpeed's monitor), ``summary`` (``summary.json``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import WriteFailed
    from .epoch import TrainingStopped, cross_entropy, make_loader, to_engine
    from .preempt import EXIT_RESUMABLE, Preempted, StopFlag
    from .resume import config_changes, resume_fingerprint
    from .trainer import RunResult, Trainer

# Loaded on first use: the own-loop checkpoints (ds_twophase.save_checkpoint) read and write
# trainer/checkpoint.py's format without building a trainer (data sets, models).
_LAZY = {
    "EXIT_RESUMABLE": ".preempt",
    "Preempted": ".preempt",
    "RunResult": ".trainer",
    "StopFlag": ".preempt",
    "Trainer": ".trainer",
    "TrainingStopped": ".epoch",
    "WriteFailed": ".checkpoint",
    "config_changes": ".resume",
    "cross_entropy": ".epoch",
    "make_loader": ".epoch",
    "resume_fingerprint": ".resume",
    "to_engine": ".epoch",
}

__all__ = [
    "EXIT_RESUMABLE",
    "Preempted",
    "RunResult",
    "StopFlag",
    "Trainer",
    "TrainingStopped",
    "WriteFailed",
    "config_changes",
    "cross_entropy",
    "make_loader",
    "resume_fingerprint",
    "to_engine",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ds_twophase.trainer' has no attribute {name!r}")
