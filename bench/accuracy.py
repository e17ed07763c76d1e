"""The accuracy study: the paper's Table 2 rows at MNIST-1D scale under one tuning protocol.

Protocol (fixed before any result was seen; ``docs/results.md`` repeats it):

1. ``grid``: for each of the five rows (``configs/mnist1d/<row>.json``) a grid of learning rates,
   for the two LARS rows crossed with trust coefficients 0.001 and 0.01, every point trained with
   the tuning seed 0. A point is judged only on its validation accuracy after the last epoch
   (``trainer.dataset.val_size`` 2000 samples held out of the 16,000 training samples); the test
   split is never looked at. Ties go to the first point in grid order.
2. ``final``: each row's chosen point trained on five fresh seeds (1-5); only these report test
   accuracy.
3. ``studies``: two-phase + LARS at its chosen point with probe batches 128/256/2048,
   ``extra_epochs_ratio`` 0.2/0.3333/0.4/0.5 and ``decay_factor`` 0.3/0.5/0.7, seeds 1-5 (a
   study run identical to a final run is a link to it, not a second run).

    python bench/accuracy.py --work-dir runs/accuracy --phase all      # the whole protocol
    python bench/accuracy.py --work-dir runs/accuracy --dry-run        # the run list and count
    python bench/accuracy.py --work-dir runs/accuracy --report-only    # docs/results.md only

The whole protocol is 96 distinct runs (36 grid, 25 final, 35 study runs; 15 study specs
equal a final run): 1 h 48 min on an otherwise idle 2-core machine (2026-11-30, two at a time),
about 2 min per run at batch 2048 and 3 min at batch 128.

Runs are ``python -m ds_twophase.train`` subprocesses, two at a time (``--jobs``), one torch
thread each. The study is resumable: a finished run is reused, an unfinished one resumed, and a
directory holding another config (compared minus bookkeeping keys) is refused. After every
phase ``docs/results.md`` is regenerated from the run directories alone (``config.json`` and
``summary.json`` of each run).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import keep_by_hand, write_atomic
from study import (
    ROOT,
    RunSpec,
    StaleRun,
    gap_closed_ci,
    link_duplicates,
    read_run,
    run_all,
    run_status,
)

from ds_twophase.analysis import bootstrap_ci

CONFIGS = ROOT / "configs" / "mnist1d"
RESULTS = ROOT / "docs" / "results.md"
ROWS = ["small_batch", "large_batch_step", "lars_step", "two_phase", "two_phase_lars"]
PAPER_NAMES = {
    "small_batch": "small-batch",
    "large_batch_step": "large-batch",
    "lars_step": "LARS",
    "two_phase": "two-phase",
    "two_phase_lars": "two-phase + LARS",
}
SMALL, LARGE, LARS, TPL = "small_batch", "large_batch_step", "lars_step", "two_phase_lars"
# x1/4 to x2 of the linear-scaling LR of the large batch (0.1 * 2048 / 128 = 1.6).
SGD_LRS = [0.4, 0.8, 1.6, 3.2]
# LARS scales each layer's step by its trust ratio, so its LR sits higher: x1/4 to x8.
LARS_LRS = [0.4, 0.8, 1.6, 3.2, 6.4, 12.8]
TRUST = [0.001, 0.01]
GRIDS: dict[str, tuple[list[float], list[float | None]]] = {
    SMALL: ([0.025, 0.05, 0.1, 0.2], [None]),  # x1/4 to x2 of its own 0.1
    LARGE: (SGD_LRS, [None]),
    LARS: (LARS_LRS, TRUST),
    "two_phase": (SGD_LRS, [None]),
    TPL: (LARS_LRS, TRUST),
}
TUNE_SEED = 0
SEEDS = [1, 2, 3, 4, 5]
STUDIES: dict[str, tuple[str, list[float]]] = {
    "probe_batch": ("scheduler.params.probe.batch_size", [128, 256, 2048]),
    "extra_epochs_ratio": ("scheduler.params.extra_epochs_ratio", [0.2, 0.3333, 0.4, 0.5]),
    "decay_factor": ("scheduler.params.decay_factor", [0.3, 0.5, 0.7]),
}


def point_sets(lr: float, eta: float | None) -> list[str]:
    sets = [f"optimizer.params.lr={lr}"]
    return sets + ([] if eta is None else [f"optimizer.params.trust_coefficient={eta}"])


def point_name(lr: float, eta: float | None) -> str:
    return f"lr{lr}" if eta is None else f"lr{lr}_eta{eta}"


def grid_specs(rows: list[str]) -> list[RunSpec]:
    return [
        RunSpec(
            f"grid/{row}/{point_name(lr, eta)}",
            CONFIGS / f"{row}.json",
            [*point_sets(lr, eta), f"trainer.seed={TUNE_SEED}"],
        )
        for row in rows
        for eta in GRIDS[row][1]
        for lr in GRIDS[row][0]
    ]


def choose(work: Path, row: str) -> dict[str, Any] | None:
    """The row's grid point with the highest final validation accuracy (``None`` until every
    point of the row's grid has finished)."""
    points = []
    for eta in GRIDS[row][1]:
        for lr in GRIDS[row][0]:
            run = read_run(work / "grid" / row / point_name(lr, eta))
            if run is None:
                return None
            points.append((lr, eta, run["final_val_accuracy"]))
    lr, eta, acc = max(points, key=lambda p: p[2])  # max keeps the first of equal points
    return {
        "lr": lr,
        "eta": eta,
        "val_accuracy": acc,
        "edge": lr in (GRIDS[row][0][0], GRIDS[row][0][-1]),
    }


def final_specs(rows: list[str], chosen: dict[str, dict]) -> list[RunSpec]:
    return [
        RunSpec(
            f"final/{row}/s{seed}",
            CONFIGS / f"{row}.json",
            [*point_sets(chosen[row]["lr"], chosen[row]["eta"]), f"trainer.seed={seed}"],
        )
        for row in rows
        for seed in SEEDS
    ]


def study_specs(chosen: dict[str, Any]) -> list[RunSpec]:
    return [
        RunSpec(
            f"studies/{study}/{value}/s{seed}",
            CONFIGS / f"{TPL}.json",
            [*point_sets(chosen["lr"], chosen["eta"]), f"{key}={value}", f"trainer.seed={seed}"],
        )
        for study, (key, values) in STUDIES.items()
        for value in values
        for seed in SEEDS
    ]


def plan(work: Path, phase: str, rows: list[str], dry: bool) -> tuple[list[RunSpec], list[str]]:
    """The runs of ``phase`` that can be listed now, and notes on those that cannot yet."""
    specs, notes = [], []
    if phase in ("grid", "all"):
        specs += grid_specs(rows)
    if phase in ("final", "studies", "all"):
        chosen = {row: choose(work, row) for row in rows}
        ready = [row for row in rows if chosen[row] is not None]
        for row in rows:
            if chosen[row] is None:
                notes.append(f"{row}: grid unfinished; its final runs ({len(SEEDS)}) come after it")
        finals = final_specs(ready, chosen)
        studies = study_specs(chosen[TPL]) if TPL in ready else []
        if TPL in rows and TPL not in ready and phase != "final":
            n = sum(len(v) for _, v in STUDIES.values()) * len(SEEDS)
            notes.append(f"{TPL}: grid unfinished; the studies ({n} specs) come after it")
        target = link_duplicates(finals + studies, work, dry=dry)
        wanted = (finals if phase in ("final", "all") else []) + (
            studies if phase in ("studies", "all") else []
        )
        for spec in wanted:  # a study identical to a final run trains (or reuses) that run
            if target[spec.name] not in specs:
                specs.append(target[spec.name])
    return specs, notes


def limit_per_row(specs: list[RunSpec], limit: int) -> list[RunSpec]:
    """The first ``limit`` specs of each row (``grid/<row>/...``, ``final/<row>/...``)."""
    counts: dict[str, int] = {}
    kept = []
    for spec in specs:
        row = "/".join(spec.name.split("/")[:2])
        counts[row] = counts.get(row, 0) + 1
        if counts[row] <= limit:
            kept.append(spec)
    return kept


def protocol_size(rows: list[str]) -> int:
    """Distinct runs of the whole protocol (the count does not depend on the grid's choice)."""
    stand_in = {row: {"lr": GRIDS[row][0][0], "eta": GRIDS[row][1][0]} for row in rows}
    later = final_specs(rows, stand_in) + (study_specs(stand_in[TPL]) if TPL in rows else [])
    distinct = {id(s) for s in link_duplicates(later, Path("/nonexistent"), dry=True).values()}
    return len(grid_specs(rows)) + len(distinct)


# -- the report, from the run directories alone ------------------------------------------------


def runs_under(path: Path) -> list[dict[str, Any]]:
    found = [read_run(p) for p in sorted(path.glob("s*")) if p.is_dir()]
    return [r for r in found if r is not None]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def mean_std_ci(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    lo, hi = bootstrap_ci(values) if len(values) > 1 else (values[0], values[0])
    return f"{pct(np.mean(values))} ± {pct(sd)} [{pct(lo)}, {pct(hi)}] (n={len(values)})"


def epochs_list(runs: list[dict], key: str) -> str:
    return ", ".join("-" if r[key] is None else f"{r[key]:g}" for r in runs) or "-"


def decays(runs: list[dict]) -> str:
    return ", ".join(str(len(r["decay_epochs"])) for r in runs) or "-"


def share(runs: list[dict]) -> str:
    values = [r["probe_share"] for r in runs if r["probe_share"] is not None]
    return "-" if not values else f"{100 * np.mean(values):.1f} %"


def hyper(cfg: dict[str, Any]) -> str:
    opt, sched = cfg["optimizer"], cfg["scheduler"]
    p, sp = opt["params"], sched["params"]
    out = [f"{opt['type']} lr {p['lr']}"]
    if "trust_coefficient" in p:
        out.append(f"η {p['trust_coefficient']}")
    out.append(f"batch {cfg['train_batch_size']}, warmup {sp.get('warmup_epochs', 0)}")
    if sched["type"] == "TwoPhaseLR":
        probe = sp.get("probe", {}).get("batch_size", cfg["train_batch_size"])
        out.append(
            f"two-phase β {sp.get('decay_factor', 0.5)}, ratio {sp.get('extra_epochs_ratio', 0.3333)}, "
            f"cap {sp.get('max_exploration_epochs')}, probe {probe}"
        )
    else:
        out.append(f"step ×{sp.get('gamma')} at {sp.get('milestones')}")
    return ", ".join(out)


def render(work: Path, command: str) -> str:
    finals = {row: runs_under(work / "final" / row) for row in ROWS}
    tests = {row: [r["test_accuracy"] for r in finals[row]] for row in ROWS}
    every = [read_run(path.parent) for path in sorted(work.glob("**/summary.json"))]
    commits = sorted({f"{r['commit']}{' (dirty)' if r['commit_dirty'] else ''}" for r in every})
    lines = [
        "# Accuracy results (paper Table 2 at MNIST-1D scale)",
        "",
        f"Generated by `{command}` from the run directories under `{work}` on "
        f"{datetime.date.today()} ({platform.machine()}, Python {platform.python_version()}). "
        f"Commit(s) the runs were trained at: {', '.join(commits) or '-'}.",
        "",
        "Protocol, fixed before any result was seen: MNIST-1D, 16,000 training samples of which "
        "`val_size` 2000 are held out for validation (never trained on), 4,000 test samples, the "
        "small MNIST-1D CNN, 60 epochs, one process. Per row a grid of learning rates (LARS rows: "
        "× trust coefficient 0.001 and 0.01), each point trained with seed 0 and judged only on "
        "the validation accuracy after the last epoch; the best point is then trained on seeds "
        "1-5, which alone report test accuracy. No other knob is tuned per row.",
        "",
        "## Table 2 rows",
        "",
        "Test accuracy % after the last epoch: mean ± std over seeds [95 % bootstrap interval of "
        "the mean]. Gap closed: (row - large batch) / (small batch - large batch) of the means, "
        "with a bootstrap interval resampling seeds within each row.",
        "",
        "| row | chosen point | test acc. % | gap closed | plateau | switch | decays (count) "
        "| final LR | probe share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = finals[row]
        if not runs:
            lines.append(f"| `{row}` ({PAPER_NAMES[row]}) | - | no finished runs | | | | | | |")
            continue
        gap = "-"
        if row not in (SMALL, LARGE) and len(tests[SMALL]) > 1 and len(tests[LARGE]) > 1:
            g, lo, hi = gap_closed_ci(tests[row], tests[LARGE], tests[SMALL])
            gap = f"{100 * g:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"
        forced = "".join("*" for r in runs if r["switch_forced"])
        lines.append(
            f"| `{row}` ({PAPER_NAMES[row]}) | {hyper(runs[0]['config'])} | {mean_std_ci(tests[row])} "
            f"| {gap} | {epochs_list(runs, 'plateau_epoch')} | {epochs_list(runs, 'switch_epoch')}{forced} "
            f"| {decays(runs)} | {epochs_list(runs, 'final_lr')} | {share(runs)} |"
        )
    lines += [
        "",
        "Plateau, switch, decay count and final LR: one entry per seed, seeds in order (`*`: a "
        "switch forced by `max_exploration_epochs`).",
    ]
    lines += paired(finals) + ordering(tests) + grid_tables(work) + study_tables(work)
    return "\n".join(lines) + "\n"


def paired(finals: dict[str, list[dict]]) -> list[str]:
    a = {r["config"]["trainer"]["seed"]: r["test_accuracy"] for r in finals[TPL]}
    b = {r["config"]["trainer"]["seed"]: r["test_accuracy"] for r in finals[LARS]}
    seeds = sorted(set(a) & set(b))
    out = ["", "## Two-phase + LARS against LARS with step decay, same seeds", ""]
    if len(seeds) < 2:
        return out + ["Not enough paired seeds yet."]
    diffs = [a[s] - b[s] for s in seeds]
    lo, hi = bootstrap_ci(diffs)
    per = ", ".join(f"{100 * d:+.2f}" for d in diffs)
    return out + [
        f"Seeds {seeds}: differences (points) {per}; mean {100 * np.mean(diffs):+.2f}, 95 % "
        f"bootstrap interval [{100 * lo:+.2f}, {100 * hi:+.2f}]."
    ]


def ordering(tests: dict[str, list[float]]) -> list[str]:
    if not all(len(tests[r]) > 1 for r in (TPL, LARS, LARGE)):
        return []
    m = {r: float(np.mean(tests[r])) for r in (TPL, LARS, LARGE)}
    holds = m[TPL] > m[LARS] > m[LARGE]
    return [
        "",
        f"The paper's ordering (two-phase + LARS > LARS > large batch) "
        f"{'holds' if holds else 'does NOT hold'} in the means here: "
        f"{pct(m[TPL])} / {pct(m[LARS])} / {pct(m[LARGE])} (see the intervals above).",
    ]


def grid_tables(work: Path) -> list[str]:
    out = ["", "## Tuning grids (seed 0, validation accuracy after the last epoch)", ""]
    out += ["| row | lr | trust coeff. | val acc. % | best epoch val acc. % | chosen |"]
    out += ["|---|---|---|---|---|---|"]
    for row in ROWS:
        pick = choose(work, row)
        for eta in GRIDS[row][1]:
            for lr in GRIDS[row][0]:
                r = read_run(work / "grid" / row / point_name(lr, eta))
                mark = ""
                if pick and (pick["lr"], pick["eta"]) == (lr, eta):
                    mark = "**chosen**" + (" (grid edge)" if pick["edge"] else "")
                val = "not run" if r is None else pct(r["final_val_accuracy"])
                best = (
                    ""
                    if r is None
                    else f"{pct(r['best_val_accuracy'])} (epoch {r['best_val_epoch']})"
                )
                out.append(f"| `{row}` | {lr} | {eta or '-'} | {val} | {best} | {mark} |")
    return out


def study_tables(work: Path) -> list[str]:
    out = ["", "## Two-phase + LARS at its chosen point: probe batch and sensitivity", ""]
    out += [
        "| study | value | test acc. % | switch | decays (count) | decay epochs | final LR "
        "| probe share |"
    ]
    out += ["|---|---|---|---|---|---|---|---|"]
    for study, (_, values) in STUDIES.items():
        for value in values:
            runs = runs_under(work / "studies" / study / str(value))
            acc = mean_std_ci([r["test_accuracy"] for r in runs])
            when = "; ".join(",".join(map(str, r["decay_epochs"])) for r in runs) or "-"
            out.append(
                f"| {study} | {value} | {acc} | {epochs_list(runs, 'switch_epoch')} | "
                f"{decays(runs)} | {when} | {epochs_list(runs, 'final_lr')} | {share(runs)} |"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "accuracy")
    p.add_argument("--phase", choices=["grid", "final", "studies", "all"], default="all")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--limit", type=int, help="train at most this many runs per row (smoke tests)")
    p.add_argument("--dry-run", action="store_true", help="print the run list and count")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--replace-stale", action="store_true", help="delete and retrain stale runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if unknown := [r for r in rows if r not in ROWS]:
        p.error(f"--rows: unknown {unknown}; choose from {ROWS}")
    work = args.work_dir.resolve()
    command = "python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    phases = ["grid", "all"] if args.phase == "all" and not args.dry_run else [args.phase]
    try:
        for phase in phases:
            if args.report_only:
                break
            specs, notes = plan(work, phase, rows, dry=args.dry_run)
            if args.dry_run:
                for spec in specs:
                    try:
                        status = run_status(spec, work)
                    except StaleRun:
                        status = "STALE (refused)"
                    print(f"{spec.name:48s} {status:10s} {' '.join(spec.sets)}")
                print(f"{phase}: {len(specs)} run(s) listed", *notes, sep="\n")
                print(f"the whole protocol: {protocol_size(rows)} distinct runs")
                continue
            if args.limit is not None:
                specs = limit_per_row(specs, args.limit)
            results = run_all(specs, work, args.jobs, args.replace_stale)
            failed = [s.name for s, code, _ in results if code]
            if failed:
                print(f"failed runs (see their .log files): {failed}", file=sys.stderr)
                return 1
    except StaleRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run:
        # the reading below the tables is written by hand and survives regeneration
        current = args.results.read_text() if args.results.exists() else ""
        write_atomic(args.results, keep_by_hand(render(work, command), current))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
