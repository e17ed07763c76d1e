"""Checkpoints of a trainer run: DeepSpeed's files plus our JSON state, marked complete last.

Layout under ``<output_dir>/checkpoints``: one DeepSpeed tag directory per saved epoch
(``epoch0007/``). After DeepSpeed wrote its files and every rank passed a barrier, rank 0 writes
``epoch0007/ds_twophase.json`` (our state: epoch, scheduler, probe indices, metrics line count)
and then ``epoch0007/COMPLETE``, both atomically (temp file + rename). Resume only considers tags
with ``COMPLETE``, so a crash at any moment of saving (DeepSpeed writes its ``latest`` file before
the other ranks finish) never makes the run resume from a partial checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import dist, faults

STATE_FILE = "ds_twophase.json"
COMPLETE_FILE = "COMPLETE"
TAG_PATTERN = re.compile(r"epoch(\d{4,})")


def tag_for(epoch: int) -> str:
    """The DeepSpeed tag of the checkpoint taken after ``epoch``."""
    return f"epoch{epoch:04d}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(engine: Any, ckpt_dir: Path, epoch: int, state: dict[str, Any], *, keep: int) -> Path:
    """Save a complete checkpoint after ``epoch`` on every rank; returns its directory.

    ``state`` is our JSON state (rank 0's is written). Keeps the newest ``keep`` complete
    checkpoints and deletes older ones.
    """
    tag = tag_for(epoch)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"ds_twophase_epoch": epoch})
    if faults.crash_in_save(epoch, dist.get_rank(), dist.get_world_size()):
        os._exit(17)  # test hook: die before the checkpoint is marked complete
    dist.barrier()  # every rank's files are on disk before we call it complete
    path = ckpt_dir / tag
    if dist.is_rank_zero():
        write_json_atomic(path / STATE_FILE, state)
        write_json_atomic(path / COMPLETE_FILE, {"epoch": epoch})
        prune(ckpt_dir, keep)
    dist.barrier()
    return path


def checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint directory under ``ckpt_dir`` (complete or not),
    oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for child in ckpt_dir.iterdir():
        m = TAG_PATTERN.fullmatch(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def is_complete(path: Path) -> bool:
    """True when a tag directory holds our completion marker and state file."""
    return (path / COMPLETE_FILE).is_file() and (path / STATE_FILE).is_file()


def newest_complete(
    ckpt_dir: Path, warn: Callable[[str], None] | None = None
) -> tuple[int, Path] | None:
    """The newest complete checkpoint; ``warn`` is told about newer incomplete ones skipped."""
    for epoch, path in reversed(checkpoint_dirs(ckpt_dir)):
        if is_complete(path):
            return epoch, path
        if warn is not None:
            warn(f"checkpoint {path} is incomplete (interrupted while saving); using an older one")
    return None


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep`` and incomplete older ones."""
    entries = checkpoint_dirs(ckpt_dir)
    complete = [(e, p) for e, p in entries if is_complete(p)]
    if not complete:
        return
    kept = {p for _, p in complete[-keep:]}
    newest = complete[-1][0]
    for epoch, path in entries:
        if path not in kept and epoch < newest:
            shutil.rmtree(path, ignore_errors=True)
    # DeepSpeed's own "latest" pointer must name a tag that still exists.
    (ckpt_dir / "latest").write_text(complete[-1][1].name)


def read_state(path: Path) -> dict[str, Any]:
    """Our JSON state of a complete checkpoint."""
    return json.loads((path / STATE_FILE).read_text())
