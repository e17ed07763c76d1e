"""On-disk cache for generated datasets: npz files keyed by a hash of the generation arguments."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_path", "default_root", "load_arrays", "save_arrays"]


def default_root() -> Path:
    """The default cache directory: ``$XDG_CACHE_HOME/ds_twophase`` or ``~/.cache/ds_twophase``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ds_twophase"


def cache_path(root: str | os.PathLike[str], prefix: str, args: dict[str, Any]) -> Path:
    """``root/prefix-<hash>.npz``, where the hash covers every argument that changes the data."""
    key = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(root) / f"{prefix}-{digest}.npz"


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically.

    Ranks that build the same dataset at once each write a private temporary file and rename it
    over ``path``, so a reader never sees a half-written file and the last writer simply wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # stub: **kwds may hit allow_pickle
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        # A corrupt file (disk full, killed writer on a filesystem without atomic rename) is
        # regenerated rather than fatal.
        return None
