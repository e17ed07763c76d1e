"""``metrics.jsonl``: one JSON object per epoch.

:class:`MetricsLog` knows nothing of ranks: it writes whenever it is asked to, and the caller
decides who writes (the trainer: rank 0 only).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .. import faults


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf: a non-finite number is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only epoch log; :meth:`truncate` drops epochs after a resume point. Call the
    writing methods on one process only (the trainer uses rank 0)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        """Write one epoch's row (a single line, synced to disk). A write that fails (a full
        disk) is cut back off, so the file never ends in half a line, and the ``OSError``
        is raised."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps({k: _clean(v) for k, v in row.items()}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                faults.disk_full_in("metrics", row.get("epoch"), lambda: os.write(fd, data[:9]))
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """All rows written so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, epoch: int) -> None:
        """Keep only rows of epochs ``<= epoch`` (0: start a new file)."""
        rows = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)
