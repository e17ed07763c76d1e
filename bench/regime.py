"""Regime search for a paper-like MNIST-1D testbed (issue 20, part 1): small batch against large
batch with step decay only, so that the testbed is fixed before any two-phase or LARS run.

For each candidate regime (training size, large batch, epochs, generator setting): the small
batch 128 (SGD lr 0.1, momentum 0.9, wd 5e-4, warmup E/30, x0.1 at 50 %/75 %) on 3 seeds, and the
large batch at the linear-scaling LR 0.1*B/128 times 1/4, 1/2, 1, 2 (one more step when the best
sits on an edge) on 3 seeds each, chosen on the mean final validation accuracy. The penalty is
mean small-batch test accuracy minus mean large-batch test accuracy at the chosen LR.

    python bench/regime.py --work-dir /work/study-runs/regime            # train what is missing
    python bench/regime.py --work-dir /work/study-runs/regime --report-only

Runs are resumable (bench/study.py's stale-run check); each run's CPU time (the child's
user+sys, not wall: the machine is shared) is written next to it as ``<run>.cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    ROOT,
    md_table,
    trainer_command,
    trainer_env,
    write_atomic,
    write_section,
)
from study import RunSpec, read_run, run_status

RESULTS = ROOT / "docs" / "results.md"
HEADING = "## MNIST-1D regime search (issue 20): small batch against large batch, step decay"
SMALL_CONFIG = ROOT / "configs" / "mnist1d" / "small_batch.json"
LARGE_CONFIG = ROOT / "configs" / "mnist1d" / "large_batch_step.json"
SMALL_BATCH = 128
SMALL_LR = 0.1
HELD_OUT = 8000  # validation and test samples each: sampling error <= 0.2 points at ~97 %
SEEDS = (1, 2, 3)
LR_FACTORS = (0.25, 0.5, 1.0, 2.0)
EVAL_EVERY = 5  # validation every 5 epochs (and after the last): only the final one is used
MIN_PENALTY = 1.5


@dataclass(frozen=True)
class Regime:
    """One candidate testbed."""

    name: str
    """Directory under the work directory."""
    train: int
    """Training samples (the held-out validation split comes on top of them)."""
    batch: int
    """The large batch."""
    epochs: int
    """The epoch budget of every run."""
    generator: dict[str, Any] = field(default_factory=dict)
    """``trainer.dataset.mnist1d_args`` (empty: the standard generator)."""
    stopped: str = ""
    """Why the search stopped training this regime before its grid was done (empty: it was
    not stopped); the report prints it and the runner trains nothing more of it."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch of the large batch (the trainer drops a partial batch)."""
        return self.train // self.batch

    @property
    def uses_every_sample(self) -> bool:
        """Whether both batches divide the training set (no sample dropped in any epoch)."""
        return self.train % self.batch == 0 and self.train % SMALL_BATCH == 0

    def sets(self, seed: int) -> list[str]:
        """The ``--set`` overrides every run of this regime shares."""
        out = [
            f"trainer.dataset.train_size={self.train + HELD_OUT}",
            f"trainer.dataset.val_size={HELD_OUT}",
            f"trainer.dataset.test_size={HELD_OUT}",
            f"trainer.epochs={self.epochs}",
            f"trainer.seed={seed}",
            f"trainer.eval_every={EVAL_EVERY}",
            "trainer.checkpoint_every=50",
            f"scheduler.params.warmup_epochs={round(self.epochs / 30)}",
        ]
        if self.generator:
            out.append(f"trainer.dataset.mnist1d_args={json.dumps(self.generator)}")
        return out

    def small(self, seed: int) -> RunSpec:
        """The small-batch run of ``seed``."""
        sets = [
            *self.sets(seed),
            f"train_batch_size={SMALL_BATCH}",
            "train_micro_batch_size_per_gpu=64",
            f"optimizer.params.lr={SMALL_LR}",
        ]
        return RunSpec(f"{self.name}/small/s{seed}", SMALL_CONFIG, sets)

    def large(self, factor: float, seed: int) -> RunSpec:
        """The large-batch run at ``factor`` times the linear-scaling LR."""
        lr = self.lr(factor)
        sets = [
            *self.sets(seed),
            f"train_batch_size={self.batch}",
            f"train_micro_batch_size_per_gpu={min(self.batch, 256)}",
            f"optimizer.params.lr={lr:g}",
        ]
        return RunSpec(f"{self.name}/large/lr{lr:g}/s{seed}", LARGE_CONFIG, sets)

    def lr(self, factor: float) -> float:
        """``factor`` times the linear-scaling LR 0.1 * B / 128."""
        return SMALL_LR * self.batch / SMALL_BATCH * factor


# In the order tried: the search trains a regime only while none above it qualifies.
REGIMES = [
    Regime(
        "t6144_b1024_e150",
        6144,
        1024,
        150,
        stopped="stopped after 2 small-batch runs and 1 large-batch run: the large batch at "
        "the linear-scaling LR (seed 1) was 0.10 points below the small batch (seeds 1, 2), "
        "too far from 1.5 for LR tuning (which can only pick a point at least as good on "
        "validation) to close; 3,072 / 512 was skipped for the same reason (also 900 "
        "large-batch steps in all)",
    ),
    Regime("t2048_b1024_e150", 2048, 1024, 150),
]


def train_timed(spec: RunSpec, work: Path, resume: bool) -> tuple[RunSpec, int, float]:
    """Train one run niced in a subprocess (one torch thread) and record its CPU seconds
    (user+sys of the child and its children, from ``wait4``) in ``<run>.cpu.json``."""
    cmd = trainer_command(spec.config, spec.overrides(work))
    if resume:
        cmd += ["--resume", "auto"]
    log = work / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.Popen(
            ["nice", "-n", "5", *cmd],
            env=trainer_env(threads=1),
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - t0
    cpu_file = work / f"{spec.name}.cpu.json"
    old = json.loads(cpu_file.read_text()) if cpu_file.exists() else {"cpu_s": 0.0, "wall_s": 0.0}
    write_atomic(
        cpu_file,
        json.dumps({"cpu_s": old["cpu_s"] + cpu, "wall_s": old["wall_s"] + wall, "exit": code}),
    )
    return spec, code, cpu


def train_missing(specs: Sequence[RunSpec], work: Path, jobs: int) -> None:
    """Train every spec that is not done, ``jobs`` at a time."""
    todo = [
        (s, st == "partial") for s in specs if (st := run_status(s, work)) in ("new", "partial")
    ]
    print(f"{len(todo)} run(s) to train, {len(specs) - len(todo)} already done", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for spec, code, cpu in pool.map(lambda t: train_timed(t[0], work, t[1]), todo):
            print(f"  {spec.name}: exit {code}, {cpu / 60:.1f} CPU-min", flush=True)


def finished(spec: RunSpec, work: Path) -> dict[str, Any] | None:
    """The finished run with its CPU seconds (``cpu_s``, ``None`` when not recorded)."""
    run = read_run(work / spec.name)
    if run is not None:
        cpu_file = work / f"{spec.name}.cpu.json"
        run["cpu_s"] = json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.exists() else None
    return run


def mean_of(runs: Sequence[dict[str, Any] | None], key: str) -> float | None:
    """Mean of ``key`` over the runs, ``None`` unless all finished."""
    if not runs or any(r is None for r in runs):
        return None
    return float(np.mean([r[key] for r in runs if r is not None]))


def lr_grid(regime: Regime, work: Path) -> list[float]:
    """The LR factors to run: the base grid, extended one step past an edge that is best."""
    factors = list(LR_FACTORS)
    while True:
        val = {
            f: mean_of([finished(regime.large(f, s), work) for s in SEEDS], "final_val_accuracy")
            for f in factors
        }
        if any(v is None for v in val.values()):
            return factors
        best = max(factors, key=lambda f: val[f] or 0.0)
        if best == factors[0]:
            factors.insert(0, factors[0] / 2)
        elif best == factors[-1]:
            factors.append(factors[-1] * 2)
        else:
            return factors


def sampling_error(acc: float, n: int = HELD_OUT) -> float:
    """Binomial standard error, in points, of an accuracy ``acc`` (points) measured on ``n``."""
    p = acc / 100
    return 100 * float(np.sqrt(p * (1 - p) / n))


def assess(regime: Regime, work: Path) -> dict[str, Any]:
    """The regime's numbers from its finished runs. ``complete`` is true once the small runs
    and the whole (extended) LR grid are done; before that the LR is chosen among the grid
    points whose 3 seeds are all done, and the penalty is provisional."""
    small = [r for s in SEEDS if (r := finished(regime.small(s), work))]
    factors = lr_grid(regime, work)
    grid = {f: [finished(regime.large(f, s), work) for s in SEEDS] for f in factors}
    full = [f for f in factors if all(grid[f])]
    total = len(SEEDS) * (1 + len(factors))
    done = len(small) + sum(1 for g in grid.values() for r in g if r)
    out: dict[str, Any] = {"done": done, "total": total, "complete": done == total}
    out["grid_val"] = {
        regime.lr(f): 100 * v for f in full if (v := mean_of(grid[f], "final_val_accuracy"))
    }
    out["small"] = [100 * r["test_accuracy"] for r in small]
    runs = [r for r in [*small, *(r for g in grid.values() for r in g if r)]]
    cpu_small = [r["cpu_s"] for r in small if r["cpu_s"]]
    cpu_large = [r["cpu_s"] for g in grid.values() for r in g if r and r["cpu_s"]]
    out["cpu_min_small"] = float(np.mean(cpu_small)) / 60 if cpu_small else None
    out["cpu_min_large"] = float(np.mean(cpu_large)) / 60 if cpu_large else None
    out["runs"] = runs
    if not full:
        return out
    best = max(full, key=lambda f: mean_of(grid[f], "final_val_accuracy") or 0.0)
    out["lr"] = regime.lr(best)
    out["edge"] = best in (factors[0], factors[-1])
    out["large"] = [100 * r["test_accuracy"] for r in grid[best] if r]
    if out["small"]:
        out["penalty"] = float(np.mean(out["small"]) - np.mean(out["large"]))
    return out


def qualifies(a: dict[str, Any]) -> bool:
    """Whether an assessed regime is finished and its penalty meets the criterion."""
    return bool(a["complete"]) and a.get("penalty", 0.0) >= MIN_PENALTY


def pm(values: Sequence[float]) -> str:
    """``mean ± std (n=k)`` of accuracies in points."""
    if not values:
        return "-"
    std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):.2f}{std} (n={len(values)})"


def regime_row(r: Regime, a: dict[str, Any]) -> list[str]:
    """One line of the regime table."""
    gen = ", ".join(f"{k} {v}" for k, v in r.generator.items()) or "standard"
    grid = ", ".join(f"{lr:g}: {v:.2f}" for lr, v in a["grid_val"].items()) or "none finished"
    lr = f"{a['lr']:g}{' (grid edge)' if a['edge'] else ''}" if "lr" in a else "-"
    pen = a.get("penalty")
    pen_text = "-" if pen is None else f"{pen:.2f}" if pen < MIN_PENALTY else f"**{pen:.2f}**"
    if pen is not None and not a["complete"]:
        pen_text += " (provisional)"
    if r.stopped:
        pen_text += f"; {r.stopped}"
    cost = " / ".join(
        "-" if a[k] is None else f"{a[k]:.1f}" for k in ("cpu_min_small", "cpu_min_large")
    )
    return [
        f"{r.train:,}",
        gen,
        str(r.batch),
        str(r.steps_per_epoch),
        str(r.steps_per_epoch * r.epochs),
        "yes" if r.uses_every_sample else "no",
        str(r.epochs),
        f"{a['done']}/{a['total']}",
        f"{lr} ({grid})",
        pm(a["small"]),
        pm(a.get("large", [])),
        pen_text,
        cost,
    ]


def run_rows(r: Regime, a: dict[str, Any]) -> list[list[str]]:
    """One line per finished run of the regime."""
    rows = []
    for run in a["runs"]:
        cfg = run["config"]
        batch = cfg["train_batch_size"]
        cpu = "-" if run["cpu_s"] is None else f"{run['cpu_s'] / 60:.1f}"
        rows.append(
            [
                r.name,
                str(batch),
                f"{cfg['optimizer']['params']['lr']:g}",
                str(cfg["trainer"]["seed"]),
                str(r.train // batch),
                f"{100 * run['final_val_accuracy']:.2f}",
                f"{100 * run['test_accuracy']:.2f}",
                cpu,
            ]
        )
    return rows


def report(work: Path, regimes: Sequence[Regime] = REGIMES) -> str:
    """The results.md section: every regime tried (the rejected ones too), and every run."""
    assessed = [(r, assess(r, work)) for r in regimes]
    table = md_table(
        [
            "train samples",
            "generator",
            "large batch",
            "steps/epoch",
            "large steps in all",
            "every sample each epoch",
            "epochs",
            "runs done",
            "chosen large LR (mean final val. acc. % per LR, 3 seeds)",
            "small test acc. %",
            "large test acc. %",
            "penalty (points)",
            "CPU-min per run (small / large)",
        ],
        [regime_row(r, a) for r, a in assessed],
    )
    runs = md_table(
        [
            "regime",
            "batch",
            "lr",
            "seed",
            "steps/epoch",
            "final val. acc. %",
            "test acc. %",
            "CPU-min",
        ],
        [row for r, a in assessed for row in run_rows(r, a)],
    )
    accs = [x for _, a in assessed for x in a["small"] + a.get("large", [])]
    err = sampling_error(float(np.mean(accs))) if accs else sampling_error(97.0)
    return (
        f"{HEADING}\n\nGenerated by `python bench/regime.py --work-dir {work} --report-only` "
        "from the run directories alone. Chosen before any two-phase or LARS run in it "
        "(issue 20): the MNIST-1D CNN, one process, one torch thread, "
        f"{HELD_OUT:,} validation samples held out of `train_size` and {HELD_OUT:,} test "
        f"samples (binomial sampling error of one accuracy: {err:.2f} points, on validation "
        f"and on test alike). Small batch {SMALL_BATCH} at SGD lr {SMALL_LR}, momentum 0.9, wd "
        "5e-4; both batches warm up for E/30 epochs and decay x0.1 at 50 % and 75 % of the "
        "budget. The large batch's LR grid is the linear-scaling LR 0.1*B/128 times 1/4, 1/2, 1, "
        f"2 (extended one step past a best edge), seeds {list(SEEDS)} per point, chosen on the "
        "mean final-epoch validation accuracy; test accuracy is mean ± std over the same 3 "
        "seeds (the small batch's too); penalty = small minus large mean test accuracy; a "
        f"regime qualifies at >= {MIN_PENALTY} points. CPU time is each run's user+sys (the "
        "machine is shared: wall time says nothing), validation every "
        f"{EVAL_EVERY} epochs. The trainer drops the last partial batch: 'every sample' says "
        "whether both batches divide the training set.\n\n"
        + table
        + "\n\nEvery finished run:\n\n"
        + runs
        + "\n"
    )


def write_results(text: str) -> None:
    """Put ``text`` into docs/results.md as its section, keeping a hand-written reading."""
    write_section(HEADING, text, path=RESULTS)


def specs_to_run(regime: Regime, work: Path) -> list[RunSpec]:
    """The regime's runs that its current LR grid needs, the most informative first: the
    linear-scaling LR with the small batch, then 1/2, 2, 1/4 (so a cut-short search has a
    usable grid)."""
    factors = sorted(lr_grid(regime, work), key=lambda f: (abs(np.log2(f)), f < 1))
    large = [regime.large(f, s) for f in factors for s in SEEDS]
    small = [regime.small(s) for s in SEEDS]
    return [*small[:2], large[0], small[2], *large[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    """Train the regimes' missing runs (grids extended as they finish), then print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/work/study-runs/regime"))
    parser.add_argument("--regime", action="append", help="only these regimes (by name)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write", action="store_true", help="write the section into results.md")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    chosen = [r for r in REGIMES if not args.regime or r.name in args.regime]
    if not args.report_only:
        for regime in chosen:
            if any(qualifies(assess(r, work)) for r in REGIMES[: REGIMES.index(regime)]):
                break
            if regime.stopped:
                continue
            while specs := [
                s for s in specs_to_run(regime, work) if run_status(s, work) in ("new", "partial")
            ]:
                train_missing(specs, work, args.jobs)
    text = report(work)
    print(text)
    if args.report_only or args.write:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
