"""Checkpoints of a trainer run: DeepSpeed's files plus our JSON state, marked complete last.

Layout under ``<output_dir>/checkpoints``: one DeepSpeed tag directory per saved epoch
(``epoch0007/``). After DeepSpeed wrote its files and every rank passed a barrier, rank 0 writes
``epoch0007/ds_twophase.json`` (our state: epoch, scheduler, probe indices, metrics line count),
before it any tensors of our state as ``<name>.npy`` (numpy format, loaded without pickle; the
probe's warm-start vector), and then ``epoch0007/COMPLETE``, all atomically (temp file +
rename). Resume only considers tags with ``COMPLETE``, so a crash at any moment of saving (DeepSpeed writes its ``latest`` file before
the other ranks finish) never makes the run resume from a partial checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from . import dist, faults
from .errors import ConfigError

STATE_FILE = "ds_twophase.json"
COMPLETE_FILE = "COMPLETE"
TAG_PATTERN = re.compile(r"epoch(\d{4,})(?:\+mb(\d+))?")


def tag_for(epoch: int, micro_batches: int | None = None) -> str:
    """The DeepSpeed tag of the checkpoint taken after ``epoch``; with ``micro_batches``, of the
    mid-epoch checkpoint taken that many micro-batches into epoch ``epoch + 1``
    (``epoch0007+mb000012``; it sorts between ``epoch0007`` and ``epoch0008``)."""
    if micro_batches is None:
        return f"epoch{epoch:04d}"
    return f"epoch{epoch:04d}+mb{micro_batches:06d}"


def _write_atomic(path: Path, mode: str, write: Callable[[IO[Any]], object]) -> None:
    # A temporary file, synced, then renamed over ``path``: readers never see half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (never half-written)."""
    _write_atomic(path, "w", lambda f: json.dump(data, f, indent=1, sort_keys=True))


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` via a temporary file and a rename (never half-written)."""
    _write_atomic(path, "w", lambda f: f.write(text))


def write_array_atomic(path: Path, tensor: torch.Tensor) -> None:
    """Write a tensor as a ``.npy`` file via a temporary file and a rename."""
    array = tensor.detach().cpu().numpy()
    _write_atomic(path, "wb", lambda f: np.save(f, array, allow_pickle=False))


def save(
    engine: Any,
    ckpt_dir: Path,
    epoch: int,
    state: dict[str, Any],
    *,
    keep: int,
    tensors: dict[str, torch.Tensor] | None = None,
    micro_batches: int | None = None,
) -> Path:
    """Save a complete checkpoint after ``epoch`` on every rank; returns its directory.

    ``state`` is our JSON state and ``tensors`` our tensors (rank 0's are written; read them
    back with :func:`read_tensors`). Keeps the newest ``keep`` complete checkpoints and deletes
    older ones. ``micro_batches`` makes it a mid-epoch checkpoint (:func:`tag_for`).
    """
    tensors = tensors or {}
    tag = tag_for(epoch, micro_batches)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"ds_twophase_epoch": epoch})
    if faults.crash_in_save(epoch, dist.get_rank(), dist.get_world_size()):
        os._exit(17)  # test hook: die before the checkpoint is marked complete
    dist.barrier()  # every rank's files are on disk before we call it complete
    path = ckpt_dir / tag
    if dist.is_rank_zero():
        for name, tensor in tensors.items():
            write_array_atomic(path / f"{name}.npy", tensor)
        write_json_atomic(path / STATE_FILE, {**state, "tensors": sorted(tensors)})
        write_json_atomic(path / COMPLETE_FILE, {"epoch": epoch})
        prune(ckpt_dir, keep)
    dist.barrier()
    return path


def checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint directory under ``ckpt_dir`` (complete or not),
    oldest first; ``epoch`` counts complete epochs (a mid-epoch checkpoint sorts after the
    checkpoint of the epoch it continues)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for child in ckpt_dir.iterdir():
        m = TAG_PATTERN.fullmatch(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), int(m.group(2) or -1), child))
    return [(epoch, path) for epoch, _, path in sorted(found)]


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


def read_tensors(path: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (the ``"tensors"`` list of :func:`read_state`'s state) saved with a
    complete checkpoint, by name."""
    out = {}
    for name in names:
        try:
            out[name] = torch.from_numpy(np.load(path / f"{name}.npy", allow_pickle=False))
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())  # one line
            raise ConfigError(
                f"--resume: {path / (name + '.npy')} is unreadable ({reason}); resume from an "
                "older checkpoint with --resume PATH"
            ) from exc
    return out
