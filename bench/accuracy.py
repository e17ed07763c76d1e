"""Benchmark: the paper's Table 2 rows at MNIST-1D scale, over several seeds.

Trains the five settings of the paper's accuracy comparison (its Table 2: small batch, large batch
with the linear scaling rule and step decay, LARS with step decay, two-phase, two-phase + LARS)
from ``configs/mnist1d/`` with ``python -m ds_twophase.train`` (one process each, subprocesses,
``OMP_NUM_THREADS=1``), once per seed (``trainer.seed``: initialisation, data order, probe batch;
the data set is the same for every seed), reads every run's ``metrics.jsonl`` and reports per
setting: global batch, optimizer, schedule, the final test accuracy of each seed, mean +- sample
std, the mean best-epoch accuracy, the median wall minutes per run, the difference of the mean to
``large_batch_step`` (the paper's "large batch") and to ``small_batch``, and for the two-phase
rows the switch epoch and the decay epochs of each seed.

    python bench/accuracy.py --work-dir /tmp/accuracy_runs   # 5 configs x seeds 0,1,2, 60 epochs,
                                                             # 2 runs at a time: 12 min measured
                                                             # on a shared 2-core CPU (1-2.6 min a
                                                             # run; small_batch, 125 steps an
                                                             # epoch, is the slow one); writes
                                                             # docs/benchmarks.md
    python bench/accuracy.py --quick                         # large_batch_step and two_phase,
                                                             # seed 0, 6 epochs: 20 s; prints only
    python bench/accuracy.py --configs two_phase,two_phase_lars --seeds 0,1,2,3,4 --jobs 1

``--work-dir DIR`` keeps the runs in ``DIR/<config>_s<seed>`` and reuses every run whose
``metrics.jsonl`` already has all its epochs, so an interrupted study continues where it stopped
(an unfinished run resumes from its newest complete checkpoint with ``--resume auto``, or starts
over when it has none). Without it the runs go to a temporary directory that is removed at the
end. Results go to ``docs/benchmarks.md`` under ``## Accuracy (paper Table 2 at MNIST-1D scale)``
(only that section is replaced, atomically); ``--quick`` writes nothing unless ``--write-docs``
is given, and a study in which a run failed writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Accuracy (paper Table 2 at MNIST-1D scale)"
CONFIGS = ["small_batch", "large_batch_step", "lars_step", "two_phase", "two_phase_lars"]
QUICK_CONFIGS = ["large_batch_step", "two_phase"]
LARGE = "large_batch_step"
SMALL = "small_batch"
PAPER_NAMES = {
    "small_batch": "small-batch",
    "large_batch_step": "large-batch",
    "lars_step": "LARS",
    "two_phase": "two-phase",
    "two_phase_lars": "two-phase + LARS",
}
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")

# The paper's Table 2 (CIFAR-10, ResNet-20, 300 epochs, mean of 5 runs), as printed in
# ../shared/paper.txt. Its LR column did not survive the text extraction and is left out; the
# last row's "± 0.T%" is read as 0.2 from the paper's introduction ("92.66 ± 0.2%").
PAPER_TABLE2 = [
    ("small-batch", "128", "step-wise (β = 0.1)", "150/225", "-", "92.83 ± 0.1"),
    ("large-batch", "8,192", "step-wise (β = 0.1)", "150/225", "-", "90.40 ± 0.2"),
    ("LARS", "8,192", "step-wise (β = 0.1)", "150/225", "0.01", "92.10 ± 0.1"),
    ("two-phase", "8,192", "adaptive (β = 0.5)", "adaptive (141 ± 13)", "-", "92.48 ± 0.2"),
    (
        "two-phase + LARS",
        "8,192",
        "adaptive (β = 0.5)",
        "adaptive (153 ± 9)",
        "0.01",
        "92.66 ± 0.2",
    ),
]


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run: one config, one seed."""

    config: str
    seed: int
    out: Path
    epochs: int
    wall_s: float | None = None
    """Wall seconds of the subprocess (None: reused, or resumed, without a record)."""
    reused: bool = False
    failed: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """E.g. ``two_phase_s1``."""
        return f"{self.config}_s{self.seed}"

    @property
    def final(self) -> float:
        """Test accuracy after the last epoch."""
        return float(self.rows[-1]["val_accuracy"])

    @property
    def best(self) -> float:
        """The highest test accuracy of any epoch (chosen on the test set: optimistic)."""
        return max(float(r["val_accuracy"]) for r in self.rows if r.get("val_accuracy") is not None)

    @property
    def minutes(self) -> float:
        """Wall minutes of the run: the subprocess's, else the sum of its epochs."""
        if self.wall_s is not None:
            return self.wall_s / 60
        return sum(float(r.get("epoch_seconds") or 0.0) for r in self.rows) / 60

    @property
    def switch_epoch(self) -> int | None:
        """The epoch whose end switched to the convergence phase."""
        return next((int(r["epoch"]) for r in self.rows if r.get("decision") == "switch"), None)

    @property
    def plateau_epoch(self) -> int | None:
        """The epoch whose end first detected the loss plateau."""
        return next((int(r["epoch"]) for r in self.rows if r.get("decision") == "plateau"), None)

    @property
    def decays(self) -> list[int]:
        """The epochs whose end decayed the LR."""
        return [int(r["epoch"]) for r in self.rows if r.get("decision") == "decay"]


def metrics_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.jsonl`` (none if it is missing)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def complete(rows: list[dict[str, Any]], epochs: int) -> bool:
    """Whether a run's metrics hold exactly the epochs 1..``epochs``."""
    return [r.get("epoch") for r in rows] == list(range(1, epochs + 1))


def has_complete_checkpoint(out: Path) -> bool:
    """Whether ``--resume auto`` would find a checkpoint to continue from."""
    from ds_twophase import checkpoint

    return checkpoint.newest_complete(out / "checkpoints") is not None


def command(run: Run, epochs_override: int | None, resume: bool) -> list[str]:
    """The trainer's command line for one run."""
    cmd = [
        sys.executable,
        "-m",
        "ds_twophase.train",
        "--config",
        f"configs/mnist1d/{run.config}.json",
    ]
    sets = [f"trainer.output_dir={run.out}", f"trainer.seed={run.seed}", "trainer.progress=off"]
    if epochs_override is not None:
        sets.append(f"trainer.epochs={epochs_override}")
    for item in sets:
        cmd += ["--set", item]
    if resume:
        cmd += ["--resume", "auto"]
    return cmd


def shown(cmd: list[str]) -> str:
    """A command line as a user would type it."""
    return "OMP_NUM_THREADS=1 " + shlex.join(["python", *cmd[1:]])


def execute(run: Run, epochs_override: int | None, work: Path) -> Run:
    """Train one run (or reuse it when its metrics are complete); fills ``run.rows``."""
    record = work / f"{run.name}.wall.json"
    rows = metrics_rows(run.out)
    if complete(rows, run.epochs):
        run.rows, run.reused = rows, True
        if record.is_file():
            run.wall_s = json.loads(record.read_text()).get("wall_s")
        print(f"reuse {run.name}: {run.out} is complete", flush=True)
        return run
    resume = False
    if run.out.exists():
        if has_complete_checkpoint(run.out):
            resume = True
        else:  # nothing to continue from: start over
            shutil.rmtree(run.out)
    record.unlink(missing_ok=True)
    cmd = command(run, epochs_override, resume)
    env = dict(os.environ)
    for key in LAUNCHER_ENV:
        env.pop(key, None)  # the trainer describes its own one-rank job
    env["OMP_NUM_THREADS"] = "1"
    print(f"start {run.name}: $ {shown(cmd)}", flush=True)
    log = work / f"{run.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    rows = metrics_rows(run.out)
    if proc.returncode != 0 or not complete(rows, run.epochs):
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        run.failed = f"status {proc.returncode}, {len(rows)} of {run.epochs} epochs; log {log}"
        print(f"FAILED {run.name}: {run.failed}\n{tail}", flush=True)
        return run
    run.rows = rows
    if not resume:  # a resumed run's wall time covers only its last part
        run.wall_s = wall
        record.write_text(json.dumps({"wall_s": wall}) + "\n")
    print(f"done {run.name} in {wall / 60:.1f} min: test accuracy {run.final:.4f}", flush=True)
    return run


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One setting over its seeds."""

    config: str
    batch: int
    optimizer: str
    schedule: str
    runs: list[Run]
    sched: dict[str, Any] = field(default_factory=dict)
    """The config's ``scheduler.params``."""

    @property
    def finals(self) -> list[float]:
        """Final test accuracy per seed, in percent."""
        return [100 * r.final for r in self.runs]

    @property
    def mean(self) -> float:
        """Mean final test accuracy (percent)."""
        return statistics.mean(self.finals)

    @property
    def std(self) -> float:
        """Sample standard deviation of the final test accuracy (nan with one seed)."""
        return statistics.stdev(self.finals) if len(self.finals) > 1 else math.nan

    @property
    def best_mean(self) -> float:
        """Mean best-epoch test accuracy (percent)."""
        return statistics.mean(100 * r.best for r in self.runs)

    @property
    def minutes(self) -> float:
        """Median wall minutes per run."""
        return statistics.median(r.minutes for r in self.runs)

    @property
    def two_phase(self) -> bool:
        """Whether the row uses the two-phase schedule."""
        return "two-phase" in self.schedule

    def forced(self, run: Run) -> bool:
        """Whether ``max_exploration_epochs`` forced the run's switch: no plateau, or one so late
        that ``plateau + floor(ratio * plateau + 0.5)`` lies beyond the cap."""
        cap = self.sched.get("max_exploration_epochs")
        if cap is None or run.switch_epoch != cap:
            return False
        x = run.plateau_epoch
        if x is None:
            return True
        return x + math.floor(float(self.sched.get("extra_epochs_ratio", 1 / 3)) * x + 0.5) > cap


def describe(config: str, epochs: int) -> tuple[int, str, str]:
    """(global batch, optimizer, schedule) of a config file, in words."""
    cfg = config_json(config)
    from ds_twophase.schedulers.warmup_step import resolve_milestones

    opt = cfg["optimizer"]
    p = opt.get("params", {})
    optimizer = f"{opt['type']} lr {p.get('lr')}"
    if opt["type"] == "LARS":
        optimizer += f", η {p.get('trust_coefficient')}"
    sch = cfg["scheduler"]
    sp = sch.get("params", {})
    warm = sp.get("warmup_epochs", 0)
    warmup = f", warmup {warm}" if warm else ""
    if sch["type"] == "WarmupStepLR":
        ms = resolve_milestones(sp.get("milestones", (0.5, 0.75)), epochs)
        schedule = f"step ×{sp.get('gamma', 0.1)} after {'/'.join(map(str, ms))}{warmup}"
    elif sch["type"] == "TwoPhaseLR":
        schedule = f"two-phase (β = {sp.get('decay_factor', 0.5)}){warmup}"
    else:
        schedule = sch["type"]
    return int(cfg["train_batch_size"]), optimizer, schedule


def config_json(config: str) -> dict[str, Any]:
    """``configs/mnist1d/<config>.json``."""
    return json.loads((ROOT / "configs" / "mnist1d" / f"{config}.json").read_text())


def pct(x: float) -> str:
    """A percentage with two decimals (the test set has 4000 samples: steps of 0.025)."""
    return f"{x:.2f}"


def pm(row: Row) -> str:
    """Mean ± std."""
    return pct(row.mean) if math.isnan(row.std) else f"{pct(row.mean)} ± {pct(row.std)}"


def signed(x: float) -> str:
    """A signed difference in percentage points."""
    return f"{x:+.2f}"


def compare(a: Row, b: Row) -> str:
    """How the difference of a's mean to b's compares with the seed-to-seed spread."""
    d = a.mean - b.mean
    if len(a.runs) < 2 or len(b.runs) < 2:
        return "one seed, no spread to compare with"
    spread = max(a.std, b.std)
    overlap = not (min(a.finals) > max(b.finals) or max(a.finals) < min(b.finals))
    ranges = "seed ranges overlap" if overlap else "seed ranges do not overlap"
    if abs(d) <= spread:
        return f"within the seed-to-seed spread: larger std {pct(spread)}, {ranges}"
    if overlap:
        return f"larger than either std, {pct(spread)}, but the {ranges}"
    return f"beyond the seed-to-seed spread: larger std {pct(spread)}, {ranges}"


def table(rows: list[Row]) -> list[str]:
    """The main table (markdown)."""
    by = {r.config: r for r in rows}
    seeds = ", ".join(str(r.seed) for r in rows[0].runs)
    out = [
        f"| setting | global batch | optimizer | LR schedule | final test acc. % (seeds {seeds}) "
        "| mean ± std | vs large batch | vs small batch | best-epoch mean | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs_large = signed(r.mean - by[LARGE].mean) if LARGE in by and r.config != LARGE else "-"
        vs_small = signed(r.mean - by[SMALL].mean) if SMALL in by and r.config != SMALL else "-"
        out.append(
            f"| `{r.config}` ({PAPER_NAMES.get(r.config, r.config)}) | {r.batch} | {r.optimizer} "
            f"| {r.schedule} | {', '.join(pct(x) for x in r.finals)} | {pm(r)} | {vs_large} "
            f"| {vs_small} | {pct(r.best_mean)} | {r.minutes:.1f} |"
        )
    return out


def decisions_table(rows: list[Row]) -> list[str]:
    """Per two-phase run: plateau, switch and decay epochs."""
    out = [
        "| setting | seed | plateau detected after epoch | switch after epoch | decays after epochs "
        "| final LR scale | final test acc. % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.two_phase:
            continue
        for run in r.runs:
            decays = ", ".join(map(str, run.decays)) or "none"
            scale = 0.5 ** len(run.decays)
            switch = str(run.switch_epoch or "none")
            if r.forced(run):
                switch += " (forced: `max_exploration_epochs`)"
            out.append(
                f"| `{r.config}` | {run.seed} | {run.plateau_epoch or 'none'} | "
                f"{switch} | {decays} | {scale:g} | {pct(100 * run.final)} |"
            )
    return out


def paper_table() -> list[str]:
    """The paper's Table 2, for context."""
    out = [
        "| setting (paper) | batch size | LR decay policy | decay epochs | LARS coefficient "
        "| validation acc. % |",
        "|---|---|---|---|---|---|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in PAPER_TABLE2]
    return out


def reading(rows: list[Row]) -> list[str]:
    """What the numbers show, as bullet points; nothing else."""
    by = {r.config: r for r in rows}
    lines: list[str] = []
    large, small = by.get(LARGE), by.get(SMALL)
    gap = None
    if large is not None and small is not None:
        gap = small.mean - large.mean
        side = "below" if gap > 0 else "above"
        lines.append(
            f"- Large batch with the linear scaling rule and step decay ends {abs(gap):.2f} points "
            f"{side} small batch ({pm(large)} vs {pm(small)}): {compare(large, small)}. "
            "In the paper's Table 2 large batch is 2.43 points below small batch."
        )
    for name in ("lars_step", "two_phase", "two_phase_lars"):
        r = by.get(name)
        if r is None:
            continue
        parts = []
        if large is not None:
            parts.append(f"{signed(r.mean - large.mean)} vs large batch ({compare(r, large)})")
        if small is not None:
            parts.append(f"{signed(r.mean - small.mean)} vs small batch ({compare(r, small)})")
        closed = ""
        if (
            gap is not None
            and large is not None
            and gap > 0
            and abs(gap)
            > max(
                large.std if not math.isnan(large.std) else 0.0,
                small.std if small is not None and not math.isnan(small.std) else 0.0,
            )
        ):
            share = 100 * (r.mean - large.mean) / gap
            if share >= 100:
                closed = "; the whole gap is closed (mean at or above small batch)"
            elif share <= 0:
                closed = "; none of the gap is closed (mean at or below large batch)"
            else:
                closed = f"; it closes {share:.0f}% of the gap"
        lines.append(f"- `{name}` ({pm(r)}): {'; '.join(parts)}{closed}.")
    for a, b, what in (
        ("two_phase_lars", "two_phase", "LARS against SGD, both two-phase"),
        ("two_phase_lars", "lars_step", "two-phase against step decay, both with LARS"),
    ):
        if a in by and b in by:
            lines.append(
                f"- {what}: `{a}` {signed(by[a].mean - by[b].mean)} vs `{b}` "
                f"({compare(by[a], by[b])})."
            )
    for r in rows:
        if not r.two_phase:
            continue
        switches = [run.switch_epoch for run in r.runs]
        forced = sum(r.forced(run) for run in r.runs)
        cap = r.sched.get("max_exploration_epochs")
        ndec = [len(run.decays) for run in r.runs]
        lines.append(
            f"- `{r.config}` switched after epochs {', '.join(str(s or 'none') for s in switches)} and "
            f"decayed {', '.join(map(str, ndec))} times (seeds in order) out of "
            f"{r.runs[0].epochs} epochs; the step-decay rows decay twice."
            + (
                f" {forced} of {len(r.runs)} switches were forced by `max_exploration_epochs` = "
                f"{cap} (no plateau by then, or one too late to switch before it)."
                if forced
                else ""
            )
        )
    best_gain = statistics.mean(r.best_mean - r.mean for r in rows)
    lines.append(
        f"- The best-epoch accuracy (picked on the test set itself) sits {best_gain:.2f} points "
        "above the final one on average over the rows."
    )
    return lines


def section(rows: list[Row], cmd: str, how: str, jobs: int) -> str:
    """The ``## Accuracy`` section of docs/benchmarks.md."""
    from trainer_overhead import machine_line

    epochs = rows[0].runs[0].epochs
    date = datetime.date.today().isoformat()
    return "\n".join(
        [
            HEADING,
            "",
            f"`{cmd}` ({date}; {how}; {machine_line()}).",
            "",
            "The five settings of the paper's Table 2 at MNIST-1D scale (`configs/mnist1d/`: "
            f"16,000 training and 4,000 test samples, the small MNIST-1D CNN, {epochs} epochs, one "
            "process). Each seed (`trainer.seed`) changes the initialisation, the data order and "
            "the probe batch; the data set is the same. Final test acc.: accuracy on the 4,000 "
            "test samples after the last epoch; best-epoch: the highest of any epoch (chosen on "
            "the test set, so optimistic). Differences are of the means, in percentage points. "
            f"min/run: median wall minutes of one run ({jobs} at a time on {os.cpu_count()} cores; "
            "other jobs shared the machine, so compare these loosely).",
            "",
            *table(rows),
            "",
            "Two-phase decisions (epoch ends; the LR scale is the decay factor's product):",
            "",
            *decisions_table(rows),
            "",
            "For context only, **the paper's** Table 2 (CIFAR-10, ResNet-20, 300 epochs, mean ± "
            "std of 5 runs; its LR column is illegible in our copy of the paper, and its batch-size "
            "cells are blank for the last three rows, read here as the large batch's 8,192):",
            "",
            *paper_table(),
            "",
            "Reading:",
            "",
            *reading(rows),
            "",
        ]
    )


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--configs", help=f"comma-separated (default: {','.join(CONFIGS)})")
    parser.add_argument("--seeds", help="comma-separated trainer.seed values (default: 0,1,2)")
    parser.add_argument("--epochs", type=int, help="override trainer.epochs of every config")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--work-dir", type=Path, help="keep runs here and reuse complete ones")
    parser.add_argument(
        "--quick", action="store_true", help=f"{','.join(QUICK_CONFIGS)}, seed 0, 6 epochs"
    )
    parser.add_argument("--write-docs", action="store_true", help="write docs also with --quick")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs = args.configs or ",".join(QUICK_CONFIGS)
        args.seeds = args.seeds or "0"
        args.epochs = args.epochs or 6
    args.configs = [c.strip() for c in (args.configs or ",".join(CONFIGS)).split(",") if c.strip()]
    args.seeds = [int(s) for s in (args.seeds or "0,1,2").split(",") if s.strip()]
    for c in args.configs:
        if not (ROOT / "configs" / "mnist1d" / f"{c}.json").is_file():
            parser.error(f"--configs: no configs/mnist1d/{c}.json")
    if args.jobs < 1 or (args.epochs is not None and args.epochs < 1) or not args.seeds:
        parser.error("--jobs and --epochs must be positive, --seeds non-empty")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the study, print the section, write it to docs/benchmarks.md."""
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    cmdline = shlex.join(
        ["python", "bench/accuracy.py", *(argv if argv is not None else sys.argv[1:])]
    )
    cmdline = f"OMP_NUM_THREADS=1 {cmdline}"
    temp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="accuracy_")) if temp else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"runs in {work}", flush=True)
    runs: list[Run] = []
    for config in args.configs:
        cfg = json.loads((ROOT / "configs" / "mnist1d" / f"{config}.json").read_text())
        epochs = args.epochs or int(cfg.get("trainer", {}).get("epochs", 30))
        runs += [Run(config, s, work / f"{config}_s{s}", epochs) for s in args.seeds]
    # The slow runs (many steps per epoch) first, so the last ones to finish are short.
    order = sorted(runs, key=lambda r: r.config != SMALL)
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda r: execute(r, args.epochs, work), order))
        study_minutes = (time.perf_counter() - t0) / 60
        failed = [r for r in runs if r.failed]
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(r.name for r in failed)}")
            return 1
        rows = []
        for config in args.configs:
            mine = [r for r in runs if r.config == config]
            sched = config_json(config)["scheduler"].get("params", {})
            rows.append(Row(config, *describe(config, mine[0].epochs), mine, sched))
        fresh = sum(1 for r in runs if not r.reused)
        study = work / "study.json"
        if fresh:
            record = {"fresh": fresh, "minutes": study_minutes, "jobs": args.jobs}
            record["date"] = datetime.date.today().isoformat()
            study.write_text(json.dumps(record) + "\n")
            how = f"{fresh} runs trained by this invocation in {study_minutes:.1f} min"
            how += f", {args.jobs} at a time"
        elif study.is_file():
            rec = json.loads(study.read_text())
            how = (
                f"all runs reused from the work directory, where the last invocation that trained "
                f"({rec['date']}) trained {rec['fresh']} runs in {rec['minutes']:.1f} min, "
                f"{rec['jobs']} at a time"
            )
        else:
            how = "all runs reused from the work directory"
        text = section(rows, cmdline, how, args.jobs)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    if not args.quick or args.write_docs:
        write_section(HEADING, text)
        print(f"wrote {DOCS.relative_to(ROOT)} ({HEADING})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
