"""What several benches need: the one-rank process group, CPU-second timing, the machine and code
state, run configs, training subprocesses, markdown tables and writing one section of
docs/benchmarks.md. Benches import it as ``common`` (``bench/`` is on ``sys.path`` when a bench
runs as ``python bench/X.py``); it uses the package through public names only."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs" / "benchmarks.md"
CONFIG = "configs/mnist1d/two_phase.json"
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""Variables a training subprocess must not inherit: it describes its own one-rank job."""


# --------------------------------------------------------------------------------------------
# process and timing
# --------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (on a shared machine
    the wall clock mostly measures the scheduler)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def init_single_process() -> None:
    """Start a one-rank process group as ``python -m ds_twophase.train`` does (idempotent)."""
    from ds_twophase import dist

    dist.init_process_group(quiet=True)  # also releases DeepSpeed's /dev/shm buffer name


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence DeepSpeed's prints while engines are built and run."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def machine_line() -> str:
    """Where and how this ran (the load average is read when called: call it at the end)."""
    import deepspeed
    import torch

    return (
        f"{os.cpu_count()}-core {platform.machine()} CPU shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__.split('+')[0]}, "
        f"deepspeed {deepspeed.__version__}, Python {platform.python_version()}"
    )


def git_state() -> str:
    """``commit <sha>``, plus the uncommitted files under ``ds_twophase/`` if any."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.rstrip("\n")  # porcelain lines start with a status column

    sha = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "ds_twophase").splitlines()]
    if not dirty:
        return f"commit {sha}, `ds_twophase/` unmodified"
    return f"commit {sha} with uncommitted changes to {', '.join(f'`{d}`' for d in dirty)}"


def package_digest() -> str:
    """Short SHA-256 of the ``ds_twophase`` package's Python sources as they are on disk."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "ds_twophase").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
def run_config(config: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The validated one-process ``RunConfig`` of ``config`` (relative to the repository) with
    ``--set``-style ``overrides``, progress bar off."""
    from ds_twophase.config import load_config, validate_config

    raw = load_config(str(ROOT / config), ["trainer.progress=off", *overrides])
    return validate_config(raw, world_size=1)


def trainer_env(threads: int | None = 1) -> dict[str, str]:
    """The environment of a one-process training subprocess: no launcher variables, this
    checkout first on ``PYTHONPATH``, ``OMP_NUM_THREADS=threads`` unless ``None``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def trainer_command(config: str | Path, sets: Sequence[str]) -> list[str]:
    """``python -m ds_twophase.train --config CONFIG --set ...`` (this interpreter)."""
    cmd = [sys.executable, "-m", "ds_twophase.train", "--config", str(config)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def shown_command(cmd: Sequence[str], threads: int | None = 1) -> str:
    """``cmd`` as a user would type it (``python`` for the interpreter)."""
    prefix = f"OMP_NUM_THREADS={threads} " if threads is not None else ""
    return prefix + shlex.join(["python", *cmd[1:]])


def train_and_read(
    config: str, sets: Sequence[str], output_dir: str, threads: int | None = 1
) -> tuple[list[dict[str, Any]], str, float]:
    """Run the trainer as a subprocess into ``output_dir`` and read back its ``metrics.jsonl``:
    (rows, the command as shown, wall seconds). A failed run stops the bench."""
    cmd = trainer_command(config, [f"trainer.output_dir={output_dir}", *sets])
    shown = shown_command(cmd, threads)
    print(f"$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=trainer_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"the training run failed with status {proc.returncode}: {shown}")
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()], shown, wall


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> str:
    """``median (min-max)``, or ``-`` for no values."""
    if not values:
        return "-"
    return f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` holds one letter per column (``l`` left, ``r`` right; missing
    letters: left)."""
    rule = ["---:" if align[i : i + 1] == "r" else "---" for i in range(len(header))]
    lines = [header, rule, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


BY_HAND = "<!-- written by hand: check against the numbers above after a rerun -->"
"""From this line to the end of a section, ``write_section`` keeps what is there: benches write
tables, a person writes the sentences that read them."""


def keep_by_hand(text: str, old: str) -> str:
    """``text`` followed by ``old``'s block from the line ``BY_HAND`` on, when it has one: a
    person's reading of the numbers stays (and is theirs to re-check)."""
    _, marker, reading = old.partition(BY_HAND)
    return text if not marker else text.rstrip() + "\n\n" + BY_HAND + reading.rstrip() + "\n"


def _section(heading: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)


def write_section(heading: str, text: str, path: Path = DOCS, after: str | None = None) -> None:
    """Replace the section that starts with the line ``heading`` by ``text`` (which starts with
    that heading); a new section goes right after the section ``after`` when given and present,
    else at the end. A block from the line ``BY_HAND`` on is kept. The file is read right before the atomic replace, so benches that finish
    at the same time do not undo each other's sections."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    body = text.rstrip() + "\n"
    own = _section(heading)
    if m := own.search(current):
        body = keep_by_hand(body, m.group(0))
        new = own.sub(lambda _: body + "\n", current, count=1)
    elif after is not None and (m := _section(after).search(current)):
        new = current[: m.end()].rstrip() + "\n\n" + body + "\n" + current[m.end() :]
    else:
        new = current.rstrip() + "\n\n" + body
    write_atomic(path, new.rstrip() + "\n")


def publish(heading: str, section: str, write: bool, after: str | None = None) -> None:
    """Print a bench's markdown section and, when ``write``, put it into docs/benchmarks.md."""
    print("\n" + section)
    if write:
        write_section(heading, section, after=after)
        print(f"wrote {DOCS.relative_to(ROOT)} ({heading})")


def bench_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A bench's argument parser with the options every bench has: ``--config``, ``--quick``
    (its quickest mode, described by ``quick``; prints only) and ``--write-docs``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--config", default=CONFIG, help="run config (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"{quick}; prints only")
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: yes, except with --quick)",
    )
    return parser


def writes_docs(args: argparse.Namespace) -> bool:
    """``--write-docs`` as given, else not with ``--quick``."""
    return not args.quick if args.write_docs is None else bool(args.write_docs)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a bench times its work (CUDA timings synchronise the device)."""
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N; CUDA times are taken between "
        "torch.cuda.synchronize() calls",
    )


def resolve_device(name: str) -> Any:
    """The ``torch.device`` of ``--device``; exits with status 2 and one line when CUDA was
    asked for and is not available."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"error: --device {name}: CUDA is not available here; use --device cpu", file=sys.stderr
        )
        sys.exit(2)
    return device


def synchronize(device: Any) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU), so a timer sees all of it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
