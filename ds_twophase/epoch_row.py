"""The ``metrics.jsonl`` row: one table of its columns, and the schedule's events read from rows.

Every column a row may hold is declared once in :data:`COLUMNS` (name, type, meaning, and how
DeepSpeed's monitor gets it). The trainer checks each row against it before writing
(:func:`check_row`), ``monitor_events`` takes its tags from it, and ``summary.json``,
``analysis/runs`` and ``analysis/report`` read rows through it: :func:`schedule_events` is the one
place that turns rows into plateau, switch, decay and floor epochs. A value is ``None`` (JSON
``null``) when not measured this epoch; a column may be absent from rows written by an older
version, which readers treat as ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CODED",
    "COLUMNS",
    "SCALARS",
    "Column",
    "Events",
    "check_row",
    "schedule_events",
]


@dataclass(frozen=True)
class Column:
    """One ``metrics.jsonl`` column."""

    name: str
    """The JSON key."""
    type: type | tuple[type, ...]
    """The Python type(s) of a non-null value (``int`` counts as ``float``)."""
    meaning: str
    """What the value is, for readers of the file."""
    monitor: str | None = None
    """How DeepSpeed's monitor gets it: ``"scalar"`` (as is), ``"code"`` (a string encoded as a
    number, ``monitor_events``) or ``None`` (not sent)."""


_F, _I, _S, _B = float, int, str, bool

COLUMNS: tuple[Column, ...] = (
    Column("epoch", _I, "the epoch that ended (1-based)"),
    Column("lr", _F, "LR of the first param group after the decision", "scalar"),
    Column("train_loss", _F, "mean training loss over all ranks and micro-batches", "scalar"),
    Column("train_loss_se", _F, "its standard error (null when not finite)", "scalar"),
    Column("skipped_micro_batches", _I, "micro-batches skipped for a non-finite loss (skip mode)"),
    Column("val_loss", _F, "validation loss (null in epochs not evaluated)", "scalar"),
    Column("val_accuracy", _F, "validation accuracy (null in epochs not evaluated)", "scalar"),
    Column("phase", _S, "TwoPhaseLR's phase after the decision, or the scheduler's", "code"),
    Column("hmax", _F, "the probed eigenvalue of largest magnitude this epoch", "scalar"),
    Column("hmax_se", _F, "its standard error", "scalar"),
    Column("probe_loss", _F, "mean loss on the probe batch at the probe's weights", "scalar"),
    Column("probe_loss_se", _F, "its standard error", "scalar"),
    Column("loss_rise_z", _F, "the compared loss's rise in combined standard errors"),
    Column("hmax_rise_z", _F, "hmax's rise in combined standard errors"),
    Column("decision", _S, "the epoch-end decision (EpochRecord.decision)", "code"),
    Column("plateau", _B, "true in the epoch that completed the first plateau"),
    Column("switch_forced", _B, "true in a switch forced by max_exploration_epochs"),
    Column("warning", _S, "why no decision was made, or the end-of-run exploration note"),
    Column("probe_error", _S, "why this epoch's probe failed"),
    Column("probe_seconds", _F, "seconds the schedule's and the analysis probe took", "scalar"),
    Column("probe_hvps", _I, "Hessian-vector products the probe used", "scalar"),
    Column("probe_residual", _F, "the eigenpair's residual norm", "scalar"),
    Column("margin_q1", _F, "first quartile of the normalised output margins", "scalar"),
    Column("margin_median", _F, "median margin", "scalar"),
    Column("margin_q3", _F, "third quartile of the margins", "scalar"),
    Column("margin_iqr", _F, "interquartile range of the margins", "scalar"),
    Column("margin_iq_mean", _F, "mean margin inside [q1, q3] (accumulated margin)"),
    Column("margin_samples", _I, "samples whose margin was measured"),
    Column("margin_seconds", _F, "seconds the margin pass took"),
    Column("test_loss", _F, "test loss, last epoch only (with val_size > 0)", "scalar"),
    Column("test_accuracy", _F, "test accuracy, last epoch only (with val_size > 0)", "scalar"),
    Column("epoch_seconds", _F, "wall seconds of the whole epoch"),
)
"""Every column a row may have (the monitor gets its scalars in this order)."""

BY_NAME = {column.name: column for column in COLUMNS}
""":data:`COLUMNS` by name."""
SCALARS = tuple(c.name for c in COLUMNS if c.monitor == "scalar")
"""Columns DeepSpeed's monitor gets as they are."""
CODED = tuple(c.name for c in COLUMNS if c.monitor == "code")
"""Columns DeepSpeed's monitor gets as numeric codes."""


def check_row(row: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming a column not in :data:`COLUMNS` or a value of the wrong type
    (a writer that drifted from the table, not a user error)."""
    for name, value in row.items():
        column = BY_NAME.get(name)
        if column is None:
            raise ValueError(f"metrics row: column {name!r} is not in ds_twophase.epoch_row")
        kinds = column.type if isinstance(column.type, tuple) else (column.type,)
        if float in kinds:
            kinds = (*kinds, int)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (bad_bool or not isinstance(value, kinds)):
            raise ValueError(f"metrics row: {name} = {value!r} is not of type {column.type}")


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
    switch_forced: bool | None = None
    """Whether ``max_exploration_epochs`` forced that switch (the switch row's
    ``switch_forced``); ``None`` without a switch or in rows written before that column."""
    decays: list[int] = field(default_factory=list)
    """Epochs whose decision cut the LR (``decay``); a ``floor`` (no-op at min_lr) is not one."""
    floors: list[int] = field(default_factory=list)
    """Epochs whose decay was a no-op because the LR was already at ``min_lr``."""
    decided: bool = False
    """True when the rows record the schedule's decisions (ds_twophase's schedulers)."""
    inferred: bool = False
    """True when no decisions were recorded and ``decays`` was read from LR drops instead."""


def schedule_events(rows: Iterable[dict[str, Any]]) -> Events:
    """The schedule's marks in ``metrics.jsonl`` rows; rows without decisions (DeepSpeed's own
    schedulers) get their decays from LR drops of at least :data:`INFERRED_DECAY_DROP`."""
    rows = list(rows)
    ev = Events()
    for row in rows:
        decision, epoch = row.get("decision"), int(row["epoch"])
        ev.decided = ev.decided or decision is not None
        if ev.plateau is None and (decision == "plateau" or row.get("plateau") is True):
            ev.plateau = epoch
        if decision == "switch" and ev.switch is None:
            ev.switch = epoch
            forced = row.get("switch_forced")
            ev.switch_forced = forced if isinstance(forced, bool) else None
        elif decision == "decay":
            ev.decays.append(epoch)
        elif decision == "floor":
            ev.floors.append(epoch)
    if not ev.decided:
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
