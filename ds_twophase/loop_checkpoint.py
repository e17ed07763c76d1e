"""Checkpoints for your own loop: ``engine.save_checkpoint`` plus what ds_twophase adds.

DeepSpeed saves the model, the optimizer and the scheduler (``lr_scheduler.state_dict()``: the
two-phase schedule's phase, plateau detector, decay scale and h_prev/f_prev). What it cannot know
is the :class:`~ds_twophase.probe.HessianProbe`'s state: the fixed probe indices, the draw
counter and the warm-start vector. :func:`save_checkpoint` writes them next to DeepSpeed's files
in the trainer's format (ds_twophase/checkpoint.py: one ``epochNNNN`` tag per epoch, marked
complete last, the newest ``keep`` kept), and :func:`load_checkpoint` restores both, so a
resumed loop takes the same decisions and measures the same hmax as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import dist
from .engine import load_checkpoint as load_engine_checkpoint
from .probe import HessianProbe
from .trainer import checkpoint

EPOCH_KEY = "ds_twophase_epoch"
"""The key of the saved epoch in the ``client_state`` that :func:`load_checkpoint` returns."""


def save_checkpoint(
    engine: Any,
    save_dir: str | Path,
    epoch: int,
    probe: HessianProbe | None = None,
    *,
    keep: int = 2,
) -> Path:
    """Save a complete checkpoint after ``epoch``; call on every rank. Returns its directory
    (``save_dir/epochNNNN``); older ones beyond the newest ``keep`` are deleted."""
    # Rank 0's probe state is written: it holds the vector in every probe mode.
    parts: dict[str, checkpoint.Stateful] = {} if probe is None else {"probe": probe}
    return checkpoint.save(engine, Path(save_dir), epoch, parts, keep=keep)


def load_checkpoint(
    engine: Any,
    load_dir: str | Path,
    tag: str | None = None,
    *,
    probe: HessianProbe | None = None,
    **kwargs: Any,
) -> tuple[str | None, dict[str, Any] | None]:
    """``engine.load_checkpoint`` that also restores ``probe`` and leaves the scheduler's LR in
    force; call on every rank. Returns DeepSpeed's ``(path, client_state)``: ``(None, None)``
    when ``load_dir`` holds no checkpoint (start from scratch), else ``client_state[EPOCH_KEY]``
    is the epoch saved. Without ``tag`` the newest complete checkpoint of
    :func:`save_checkpoint` is loaded (a save interrupted by a crash is skipped); a directory of
    plain ``engine.save_checkpoint`` checkpoints loads as DeepSpeed would."""
    load_dir = Path(load_dir)

    def choose() -> tuple[str | None, dict[str, Any] | None]:
        # Rank 0 reads the files and every rank follows, so no two ranks load different tags.
        if tag is not None:
            path = load_dir / tag
        else:
            found = checkpoint.newest_complete(load_dir, warn=dist.warn_rank_zero)
            if found is None:
                return None, None
            path = found[1]
        if not checkpoint.is_complete(path):
            return path.name, None
        return path.name, checkpoint.read(path)

    chosen, state = dist.on_rank_zero(choose)
    if chosen is None and tag is None and not (load_dir / "latest").is_file():
        return None, None  # nothing saved yet (DeepSpeed would warn about a missing file)
    result = load_engine_checkpoint(engine, load_dir, tag=chosen or tag, **kwargs)
    if probe is not None and state is not None:
        checkpoint.load_parts({"probe": probe}, state)
    return result
