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
        """Write one epoch's row (a single line, flushed to disk)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
