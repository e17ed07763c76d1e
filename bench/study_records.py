"""Keep a study's results in the repository: each finished run's ``config.json`` and
``summary.json`` (and the links that stand for duplicate runs), no checkpoints, metrics or logs.

    python bench/study_records.py save WORK bench/studies/records/<testbed>
    python bench/study_records.py restore bench/studies/records/<testbed> WORK

``bench/accuracy.py --report-only --work-dir <records>`` regenerates a study's tables from the
records alone, and a study restored into a work directory resumes where the records end (its
finished runs count as done). A run already in the destination is left as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

KEPT = ("config.json", "summary.json")


def copy_records(src: Path, dst: Path) -> int:
    """Copy every finished run under ``src`` (a directory holding ``summary.json``) and every
    link to another run into ``dst``; returns how many runs (and links) were added."""
    added = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        target = dst / rel
        if path.is_symlink():
            if not target.is_symlink() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(os.readlink(path), target_is_directory=True)
                added += 1
            continue
        if path.name != "summary.json" or any(p.is_symlink() for p in path.parents):
            continue
        run, into = path.parent, target.parent
        if (into / "summary.json").exists():
            continue
        into.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copy2(run / name, into / name)
        added += 1
    return added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("action", choices=["save", "restore"])
    p.add_argument("src", type=Path, help="save: the work directory; restore: the records")
    p.add_argument("dst", type=Path, help="save: the records; restore: the work directory")
    args = p.parse_args(argv)
    if not args.src.is_dir():
        print(f"error: {args.src}: no such directory", file=sys.stderr)
        return 2
    added = copy_records(args.src, args.dst)
    print(f"{args.action}: {added} run(s) added to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
