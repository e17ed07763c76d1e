"""The accuracy study of one testbed: the paper's Table 2 rows under one tuning protocol, driven
by a study spec (``bench/studies/<testbed>.json``, see ``bench/study_spec.py``).

Protocol (``docs/results.md`` repeats it per testbed):

1. ``grid``: every row's grid points (learning rate; LARS rows also the trust coefficient; any
   other axis the spec names) trained with each tuning seed. A point is judged only on the mean
   over the tuning seeds of its validation accuracy after the last epoch; the test split is
   never looked at. Ties go to the first point in grid order. A best point on the edge of an
   extended axis (by default the learning rate) adds one more value beyond that edge and trains
   it, up to ``max_extensions`` steps; past them the row's final runs are refused with a message
   naming the values to add to the spec (``bench/study_grid.py``).
2. ``final``: each row's chosen point trained on the fresh final seeds; only these report test
   accuracy.
3. ``studies``: the spec's extra axes at a row's chosen point on the final seeds (a study run
   identical to a final run is a link to it, not a second run).

    python bench/accuracy.py --spec bench/studies/mnist1d_60.json --work-dir runs/acc --phase all
    python bench/accuracy.py --spec bench/studies/mnist1d_60.json --work-dir runs/acc --dry-run
    python bench/accuracy.py --spec bench/studies/mnist1d_60.json --work-dir runs/acc --report-only

Runs are ``python -m ds_twophase.train`` subprocesses, ``--jobs`` at a time, one torch thread
each, in ``grid/<row>/<point>/s<seed>``, ``final/<row>/s<seed>`` and
``studies/<study>/<value>/s<seed>``. The study is resumable: a finished run is reused, an
unfinished one resumed, and a directory holding another config (compared minus bookkeeping
keys) is refused. Each run's ``summary.json`` records the commit it was trained at (``git
rev-parse HEAD``, and whether the tree was dirty). After every phase the spec's section of
``docs/results.md`` (``## <title>``) is regenerated from the run directories alone; the rest of
the file, and the reading written by hand below the section's tables, stay.

Runs of the earlier, MNIST-1D-only command kept grid points in ``grid/<row>/<point>``; moved to
``grid/<row>/<point>/s0`` they are reused by ``bench/studies/mnist1d_60.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import ROOT, write_atomic, write_section
from study import RunSpec, StaleRun, link_duplicates, read_run, run_all, run_status
from study_grid import GridState, grid_run, resolve
from study_report import final_run, render, study_run
from study_spec import StudySpec, grid_points, load_spec, point_sets, set_item

from ds_twophase.errors import ConfigError

RESULTS = ROOT / "docs" / "results.md"


def states(spec: StudySpec, work: Path, rows: list[str]) -> dict[str, GridState]:
    """Each row's grid as its run directories have resolved it."""
    return {r: resolve(spec, spec.row(r), lambda n: read_run(work / n)) for r in rows}


def grid_specs(spec: StudySpec, grids: dict[str, GridState]) -> list[RunSpec]:
    """Every grid run of the rows in ``grids`` (extensions included), seeds innermost."""
    return [
        RunSpec(grid_run(row, p, seed), row.config, [*point_sets(row, p), f"trainer.seed={seed}"])
        for row in (spec.row(r) for r in grids)
        for p in grid_points(grids[row.name].grid)
        for seed in spec.tuning_seeds
    ]


def final_specs(spec: StudySpec, chosen: dict[str, dict]) -> list[RunSpec]:
    """The final runs of the rows in ``chosen`` at their chosen points."""
    return [
        RunSpec(
            final_run(r, seed),
            spec.row(r).config,
            [*point_sets(spec.row(r), p), f"trainer.seed={seed}"],
        )
        for r, p in chosen.items()
        for seed in spec.final_seeds
    ]


def study_specs(spec: StudySpec, chosen: dict[str, dict]) -> list[RunSpec]:
    """The extra studies' runs whose row is chosen."""
    return [
        RunSpec(
            study_run(st.name, value, seed),
            spec.row(st.row).config,
            [
                *point_sets(spec.row(st.row), chosen[st.row]),
                set_item(st.key, value),
                f"trainer.seed={seed}",
            ],
        )
        for st in spec.studies
        if st.row in chosen
        for value in st.values
        for seed in spec.final_seeds
    ]


def plan(
    spec: StudySpec, work: Path, phase: str, rows: list[str], dry: bool
) -> tuple[list[RunSpec], list[str]]:
    """The runs of ``phase`` that can be listed now, and notes on those that cannot yet (a
    note starting ``refused`` is a grid that needs the spec changed)."""
    grids = states(spec, work, rows)
    specs: list[RunSpec] = []
    notes: list[str] = []
    if phase in ("grid", "all"):
        specs += grid_specs(spec, grids)
    if phase in ("final", "studies", "all"):
        chosen = {r: s.chosen for r, s in grids.items() if s.chosen is not None}
        for r, s in grids.items():
            if s.refused:
                notes.append(f"refused: {s.refused}")
            elif s.chosen is None:
                notes.append(f"{r}: grid unfinished; its final runs and studies come after it")
        finals, studies = final_specs(spec, chosen), study_specs(spec, chosen)
        target = link_duplicates(finals + studies, work, dry=dry)
        wanted = (finals if phase in ("final", "all") else []) + (
            studies if phase in ("studies", "all") else []
        )
        for run in wanted:  # a study identical to a final run trains (or reuses) that run
            if target[run.name] not in specs:
                specs.append(target[run.name])
    return specs, notes


def limit_per_row(specs: list[RunSpec], limit: int) -> list[RunSpec]:
    """The first ``limit`` specs of each row (``grid/<row>/...``, ``final/<row>/...``)."""
    counts: dict[str, int] = {}
    kept = []
    for run in specs:
        row = "/".join(run.name.split("/")[:2])
        counts[row] = counts.get(row, 0) + 1
        if counts[row] <= limit:
            kept.append(run)
    return kept


def protocol_size(spec: StudySpec, rows: list[str]) -> int:
    """Distinct runs of the protocol on the spec's grids (extensions, if any, come on top)."""
    stand_in = {r: grid_points(spec.row(r).grid)[0] for r in rows}
    later = final_specs(spec, stand_in) + study_specs(spec, stand_in)
    distinct = {id(s) for s in link_duplicates(later, Path("/nonexistent"), dry=True).values()}
    grids = {r: GridState(spec.row(r), spec.row(r).grid, []) for r in rows}
    return len(grid_specs(spec, grids)) + len(distinct)


def dry_run(spec: StudySpec, work: Path, phase: str, rows: list[str]) -> None:
    """Print the runs ``phase`` would list now, their status, and the protocol's size."""
    specs, notes = plan(spec, work, phase, rows, dry=True)
    for run in specs:
        try:
            status = run_status(run, work)
        except StaleRun:
            status = "STALE (refused)"
        print(f"{run.name:48s} {status:10s} {' '.join(run.sets)}")
    print(f"{phase}: {len(specs)} run(s) listed", *notes, sep="\n")
    print(f"the whole protocol: {protocol_size(spec, rows)} distinct runs (before extensions)")


def train_phase(
    spec: StudySpec, work: Path, phase: str, rows: list[str], args: argparse.Namespace
) -> list[str]:
    """Train ``phase``; the grid phase repeats until no extension is pending. Returns the runs
    that failed and the refusals."""
    while True:
        specs, notes = plan(spec, work, phase, rows, dry=False)
        if args.limit is not None:
            specs = limit_per_row(specs, args.limit)
        results = run_all(specs, work, args.jobs, args.replace_stale)
        failed = [s.name for s, code, _ in results if code]
        if failed or not results or phase != "grid" or args.limit is not None:
            return failed + [n for n in notes if n.startswith("refused")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--spec", type=Path, required=True, help="the study spec (bench/studies/*.json)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "accuracy")
    p.add_argument("--phase", choices=["grid", "final", "studies", "all"], default="all")
    p.add_argument("--rows", help="comma-separated subset of the spec's rows")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--limit", type=int, help="train at most this many runs per row (smoke tests)")
    p.add_argument("--dry-run", action="store_true", help="print the run list and count")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--replace-stale", action="store_true", help="delete and retrain stale runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        names = [r.name for r in spec.rows]
        rows = [r for r in (args.rows or ",".join(names)).split(",") if r]
        if unknown := [r for r in rows if r not in names]:
            raise ConfigError(key="--rows", problem=f"unknown {unknown}; the spec's rows: {names}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir.resolve()
    command = "python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    phases = ["grid", "final", "studies"] if args.phase == "all" else [args.phase]
    problems: list[str] = []
    try:
        if args.dry_run:
            dry_run(spec, work, args.phase, rows)
            return 0
        for phase in [] if args.report_only else phases:
            problems = train_phase(spec, work, phase, rows, args)
            if problems:
                break
    except StaleRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.results.exists():
        write_atomic(args.results, "# Accuracy results\n")
    # the reading below the section's tables is written by hand and survives regeneration
    write_section(f"## {spec.title}", render(spec, work, command), path=args.results)
    print(f"wrote {args.results} (## {spec.title})")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
