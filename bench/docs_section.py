"""Writes one benchmark's section of docs/benchmarks.md, leaving every other section as it is."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _section(heading: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)


def write_section(heading: str, text: str, path: Path = DOCS, after: str | None = None) -> None:
    """Replace the section that starts with the line ``heading`` by ``text`` (which starts with
    that heading); a new section goes right after the section ``after`` when given and present,
    else at the end. The file is read right before an atomic replace, so benchmarks that finish
    at the same time do not undo each other's sections."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    body = text.rstrip() + "\n"
    own = _section(heading)
    if own.search(current):
        new = own.sub(lambda _: body + "\n", current, count=1)
    elif after is not None and (m := _section(after).search(current)):
        new = current[: m.end()].rstrip() + "\n\n" + body + "\n" + current[m.end() :]
    else:
        new = current.rstrip() + "\n\n" + body
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new.rstrip() + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
