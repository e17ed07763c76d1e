"""Checkpoints of a trainer run: DeepSpeed's files plus our JSON state, marked complete last.

Layout under ``<output_dir>/checkpoints``: one DeepSpeed tag directory per saved epoch
(``epoch0007/``). After DeepSpeed wrote its files (model, optimizer, LR scheduler and the engine's
client state) and every rank passed a barrier, rank 0 writes ``epoch0007/ds_twophase.json``: the
checkpoint's metadata (epoch, config fingerprint, world size) and one key per stateful part
(:class:`Stateful`: scheduler, probes, mid-epoch progress), the parts' tensors before it as
``<part>_<key>.npy`` (numpy format, loaded without pickle; a probe's warm-start vector), and then
``epoch0007/COMPLETE``, all atomically (temp file + rename). Resume only considers tags with ``COMPLETE``, so a crash at any moment of saving (DeepSpeed writes its ``latest`` file before
the other ranks finish) never makes the run resume from a partial checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch

from .. import dist, faults
from ..errors import ConfigError, one_line

STATE_FILE = "ds_twophase.json"
COMPLETE_FILE = "COMPLETE"
TAG_PATTERN = re.compile(r"epoch(\d{4,})(?:\+mb(\d+))?")
META_KEYS = ("epoch", "config", "world_size", "tensors")
"""Keys of the state file that describe the checkpoint; every other key is a part's state."""
# Checkpoints written before the parts map stored each rank's mid-epoch RNG state as
# ``rng_rank<r>.npy``, without its part's name in front (today: ``partial_rng_rank<r>.npy``).
_UNPREFIXED_TENSORS = {"rng_rank": "partial"}


class Stateful(Protocol):
    """A part of a checkpoint: :meth:`state_dict` is its state, JSON values with tensors as
    top-level values (``None``: nothing to save this time), :meth:`load_state_dict` restores
    it. A new part joins the map the trainer saves, not the save code."""

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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


def pack_parts(
    parts: Mapping[str, Stateful],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every part's state (call on every rank: a part may gather from all of them) as the state
    file's JSON, one key per part, and the parts' tensors, named ``<part>_<key>``."""
    states: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, part in parts.items():
        state = part.state_dict()
        if state is None:
            continue
        states[name] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}_{key}"] = value
            else:
                states[name][key] = value
    return states, tensors


def part_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each part's saved state with its tensors back in place, from a state as the readers of a
    checkpoint hold it (:func:`read_state` with the :func:`read_tensors` under ``"tensors"``)."""
    parts = {
        name: dict(value)
        for name, value in state.items()
        if name not in META_KEYS and isinstance(value, dict)
    }
    for file, tensor in state.get("tensors", {}).items():
        # The longest part name that prefixes the file: "probe_every_vector" is probe_every's.
        owner = max((name for name in parts if file.startswith(name + "_")), key=len, default="")
        if owner:
            parts[owner][file[len(owner) + 1 :]] = tensor
            continue
        for prefix, name in _UNPREFIXED_TENSORS.items():
            if file.startswith(prefix) and name in parts:
                parts[name][file] = tensor
    return parts


def load_parts(parts: Mapping[str, Stateful], state: dict[str, Any]) -> None:
    """Restore every part of ``parts`` that the checkpoint's ``state`` holds (as
    :func:`part_states` reads it); a part it does not hold keeps its fresh state."""
    saved = part_states(state)
    for name, part in parts.items():
        if name in saved:
            part.load_state_dict(saved[name])


def save(
    engine: Any,
    ckpt_dir: Path,
    epoch: int,
    parts: Mapping[str, Stateful],
    *,
    keep: int,
    meta: dict[str, Any] | None = None,
    micro_batches: int | None = None,
) -> Path:
    """Save a complete checkpoint after ``epoch`` on every rank; returns its directory.

    DeepSpeed's files hold the engine (model, optimizer, LR scheduler, the epoch in its client
    state); our state file holds ``meta`` (JSON, beside ``epoch``) and every part of ``parts``
    (:func:`pack_parts`; rank 0's are written; read them back with :func:`read_state`,
    :func:`read_tensors` and :func:`load_parts`). Keeps the newest ``keep`` complete
    checkpoints and deletes older ones. ``micro_batches`` makes it a mid-epoch checkpoint
    (:func:`tag_for`).
    """
    states, tensors = pack_parts(parts)
    state = {"epoch": epoch, **(meta or {}), **states}
    tag = tag_for(epoch, micro_batches)
    path = ckpt_dir / tag
    with stop_on_write_error(f"checkpoint {path}", ckpt_dir, discard=path):
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"ds_twophase_epoch": epoch})
        if faults.crash_in_save(epoch, dist.get_rank(), dist.get_world_size()):
            os._exit(17)  # test hook: die before the checkpoint is marked complete
        dist.barrier()  # every rank's files are on disk before we call it complete
        if dist.is_rank_zero():
            faults.disk_full_in("checkpoint", epoch)
            for name, tensor in tensors.items():
                write_array_atomic(path / f"{name}.npy", tensor)
            write_json_atomic(path / STATE_FILE, {**state, "tensors": sorted(tensors)})
            write_json_atomic(path / COMPLETE_FILE, {"epoch": epoch})
            prune(ckpt_dir, keep)
        dist.barrier()
    return path


def unreadable(path: Path) -> str | None:
    """Why the complete checkpoint ``path`` cannot be loaded (a truncated or corrupted file), or
    ``None`` when every file in it reads back intact.

    DeepSpeed's ``.pt`` files are zip archives with a CRC-32 per record: each is opened and its
    records checked (one read of the checkpoint, no unpickling); our JSON and ``.npy`` files are
    parsed.
    """
    for file in sorted(path.rglob("*")):
        if file.is_file():
            problem = _file_problem(file)
            if problem is not None:
                return f"{file}: {problem}"
    return None


def _file_problem(file: Path) -> str | None:
    try:
        if file.suffix == ".pt":
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            return None if bad is None else f"record {bad} fails its CRC check"
        if file.suffix == ".npy":
            np.load(file, allow_pickle=False)
        elif file.suffix == ".json" or file.name == COMPLETE_FILE:
            json.loads(file.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return one_line(exc)
    return None


@contextlib.contextmanager
def stop_on_write_error(
    what: str, ckpt_dir: Path, *, discard: Path | None = None
) -> Iterator[None]:
    """Turn a failed write inside the block (a full disk, a lost mount: an ``OSError``, or the
    ``RuntimeError`` ``torch.save`` raises for it) into one :class:`WriteFailed` line naming
    ``what``, the error, the space left, and the newest complete checkpoint in ``ckpt_dir``,
    which the failed write left intact. ``discard``: a checkpoint being written, removed
    (unless complete) to give its space back. Collective failures pass through unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and dist.is_collective_failure(exc):
            raise
        if discard is not None and not is_complete(discard):
            shutil.rmtree(discard, ignore_errors=True)
            with contextlib.suppress(OSError):
                prune(ckpt_dir, keep=len(checkpoint_dirs(ckpt_dir)))  # DeepSpeed's "latest"
        reason = one_line(exc)
        target = ckpt_dir if ckpt_dir.exists() else ckpt_dir.parent
        try:
            free = f"; {shutil.disk_usage(target).free / 2**20:.1f} MiB free there"
        except OSError:
            free = ""
        kept = newest_complete(ckpt_dir)
        resume = (
            f"the newest complete checkpoint is {kept[1]}" if kept else "no checkpoint was saved"
        )
        raise WriteFailed(
            f"writing {what} failed ({reason}{free}); {resume}; make room and continue with "
            "--resume auto"
        ) from None


class WriteFailed(RuntimeError):
    """A file of the run could not be written; the run stops (the message is one line)."""


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


@dataclass(frozen=True)
class Skipped:
    """A checkpoint newer than the one chosen that cannot be resumed from."""

    path: Path
    """Its directory."""
    problem: str
    """Why, as words after its path: ``is incomplete (...)`` or ``is unreadable (...)``."""
    damaged: bool
    """True when a file of the complete checkpoint is unreadable (restoring the file would fix
    it), False when the save was interrupted."""

    def line(self) -> str:
        """The one-line warning about it."""
        return f"checkpoint {self.path} {self.problem}; using an older one"


@dataclass(frozen=True)
class Scan:
    """What :func:`scan` found in a checkpoint directory."""

    newest: tuple[int, Path] | None
    """``(epoch, path)`` of the newest complete checkpoint, or ``None``."""
    skipped: list[Skipped] = field(default_factory=list)
    """Newer checkpoints passed over, newest first."""


def scan(ckpt_dir: Path, *, verify: bool = False) -> Scan:
    """The newest complete checkpoint and the newer ones skipped: incomplete (interrupted while
    saving) or, with ``verify``, :func:`unreadable` (truncated or corrupted since; this reads
    every file of the checkpoints it looks at)."""
    skipped = []
    for epoch, path in reversed(checkpoint_dirs(ckpt_dir)):
        if not is_complete(path):
            skipped.append(Skipped(path, "is incomplete (interrupted while saving)", False))
            continue
        unread = unreadable(path) if verify else None
        if unread is None:
            return Scan((epoch, path), skipped)
        skipped.append(Skipped(path, f"is unreadable ({unread})", True))
    return Scan(None, skipped)


def newest_complete(
    ckpt_dir: Path, warn: Callable[[str], None] | None = None, *, verify: bool = False
) -> tuple[int, Path] | None:
    """``(epoch, path)`` of the newest complete checkpoint (:func:`scan`); ``warn`` is told,
    one line each, about newer ones skipped."""
    found = scan(ckpt_dir, verify=verify)
    if warn is not None:
        for skipped in found.skipped:
            warn(skipped.line())
    return found.newest


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


def read(path: Path) -> dict[str, Any]:
    """The state of the complete checkpoint ``path`` with its tensors, by name, under
    ``"tensors"`` (what :func:`part_states` and :func:`load_parts` take)."""
    state = read_state(path)
    state["tensors"] = read_tensors(path, state.get("tensors", []))
    return state


def read_tensors(path: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (the ``"tensors"`` list of :func:`read_state`'s state) saved with a
    complete checkpoint, by name."""
    out = {}
    for name in names:
        try:
            out[name] = torch.from_numpy(np.load(path / f"{name}.npy", allow_pickle=False))
        except (OSError, ValueError) as exc:
            reason = one_line(exc)
            raise ConfigError(
                f"--resume: {path / (name + '.npy')} is unreadable ({reason}); resume from an "
                "older checkpoint with --resume PATH"
            ) from exc
    return out
