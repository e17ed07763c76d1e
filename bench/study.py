"""Helpers for resumable multi-run studies (bench/accuracy.py): run specs, stale-run detection,
a two-at-a-time runner, reading run directories back, and bootstrap intervals.

A run is a config file plus ``--set`` overrides trained into its own directory. Before a
directory is reused its ``config.json`` is compared with the config the study would run now
(both minus bookkeeping keys, ``ds_twophase.trainer.resume.resume_fingerprint``): a difference is refused, never
silently reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, trainer_command, trainer_env

from ds_twophase.config import load_config
from ds_twophase.trainer import config_changes, resume_fingerprint


class StaleRun(RuntimeError):
    """A run directory holds a run of a different config than the study would run now."""


@dataclass
class RunSpec:
    """One training run of the study."""

    name: str
    """Directory under the work directory, e.g. ``grid/lars_step/lr1.6_eta0.01``."""
    config: Path
    """The base config file."""
    sets: list[str] = field(default_factory=list)
    """``--set`` overrides (without ``trainer.output_dir``, which the runner adds)."""

    def overrides(self, work: Path) -> list[str]:
        """All overrides, the output directory included."""
        return [*self.sets, f"trainer.output_dir={work / self.name}"]

    def fingerprint(self, work: Path) -> dict[str, Any]:
        """The resolved config's leaves that define the run (bookkeeping keys removed)."""
        return resume_fingerprint(load_config(self.config, self.overrides(work)))


def run_status(spec: RunSpec, work: Path) -> str:
    """``new`` (nothing there), ``done`` (finished, same config), ``partial`` (same config,
    unfinished: resumed) or ``alias`` (a link to an identical run); raises :class:`StaleRun`
    when the directory holds a different config."""
    out = work / spec.name
    if out.is_symlink():
        return "alias"
    saved = out / "config.json"
    if not saved.exists():
        return "new"
    changes = config_changes(
        resume_fingerprint(json.loads(saved.read_text())), spec.fingerprint(work)
    )
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise StaleRun(
            f"{out}: holds a run of another config ({'; '.join(changes[:3])}{more}); delete it, "
            "pass --replace-stale, or use a new --work-dir"
        )
    return "done" if (out / "summary.json").exists() else "partial"


def link_duplicates(specs: Sequence[RunSpec], work: Path, dry: bool = False) -> dict[str, RunSpec]:
    """Map each spec's name to the spec that trains it: the first spec with the same config.
    A later duplicate's directory becomes a symlink to that run (not created when ``dry``)."""
    seen: dict[str, RunSpec] = {}
    target = {}
    for spec in specs:
        first = seen.setdefault(json.dumps(spec.fingerprint(work), sort_keys=True), spec)
        target[spec.name] = first
        if first is spec or dry:
            continue
        link = work / spec.name
        link.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(work / first.name, link.parent)
        if link.is_symlink() and os.readlink(link) != rel:
            link.unlink()
        if not link.exists() and not link.is_symlink():
            link.symlink_to(rel, target_is_directory=True)
    return target


def train(spec: RunSpec, work: Path, resume: bool) -> tuple[RunSpec, int, float]:
    """Train one run in a subprocess (one process, one torch thread); returns its exit status
    and wall seconds. Output goes to ``<run dir>.log``."""
    env = trainer_env(threads=1)
    cmd = trainer_command(spec.config, spec.overrides(work))
    if resume:
        cmd += ["--resume", "auto"]
    log = work / f"{spec.name}.log"  # names hold dots (lr0.025): no with_suffix
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    return spec, code, time.perf_counter() - t0


def run_all(
    specs: Sequence[RunSpec],
    work: Path,
    jobs: int,
    replace_stale: bool = False,
    report: Callable[[str], None] = print,
) -> list[tuple[RunSpec, int, float]]:
    """Train every spec that is not done, ``jobs`` at a time; stale directories are refused
    (raises :class:`StaleRun` before anything starts) unless ``replace_stale``."""
    todo = []
    for spec in specs:
        try:
            status = run_status(spec, work)
        except StaleRun:
            if not replace_stale:
                raise
            shutil.rmtree(work / spec.name)
            status = "new"
        if status in ("new", "partial"):
            todo.append((spec, status == "partial"))
    report(f"{len(todo)} run(s) to train, {len(specs) - len(todo)} already done")
    results = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train, spec, work, resume) for spec, resume in todo]
        for fut in futures:
            spec, code, seconds = fut.result()
            report(f"  {spec.name}: exit {code}, {seconds / 60:.1f} min")
            results.append((spec, code, seconds))
    return results


def read_run(path: Path) -> dict[str, Any] | None:
    """A finished run's ``summary.json`` with its ``config.json`` under ``"config"`` (``None``
    while unfinished)."""
    summary = path / "summary.json"
    if not summary.exists():
        return None
    data = json.loads(summary.read_text())
    data["config"] = json.loads((path / "config.json").read_text())
    data["path"] = str(path)
    return data


def gap_closed_ci(
    row: Sequence[float],
    large: Sequence[float],
    small: Sequence[float],
    level: float = 0.95,
    n: int = 10000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(row - large) / (small - large)`` of the means and its bootstrap interval, resampling
    the seeds of each row independently."""
    rng = np.random.default_rng(seed)

    def boot(v: Sequence[float]) -> np.ndarray:
        x = np.asarray(v, dtype=float)
        return x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)

    point = (np.mean(row) - np.mean(large)) / (np.mean(small) - np.mean(large))
    r, lg, sm = boot(row), boot(large), boot(small)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = (r - lg) / (sm - lg)
    gaps = gaps[np.isfinite(gaps)]
    tail = (1 - level) / 2
    return float(point), float(np.quantile(gaps, tail)), float(np.quantile(gaps, 1 - tail))
