"""Benchmark: Hessian probe solvers compared on the same weights.

In one process (a gloo group of one rank), trains the config at 2048 / 256 for a few epochs,
then at each of a few probe points trains one more epoch and runs every solver on the same
weights, in rotating order: the shipped probe (``ds_twophase.probe.HessianProbe``: Lanczos with
the Ritz-residual stopping rule and the mixed warm start), Lanczos from the seeded random start,
and the paper's power iteration (10 HVPs, as the paper timed it; and with the ``max_iters`` /
``tol`` stopping rule ds_twophase used before 0.1), the latter a reference implementation here
(``power_iteration``) on the library's HVP engine and probe samples. A floor row (setup + 1 HVP)
and a 30-step Lanczos reference (the error column) bound them. The warm-started probe has no
previous vector at its first call, so the first point is not counted.

    python bench/probe_solvers.py --probe-batch 2048   # after 20 epochs, 6 points; writes
                                                       # docs/benchmarks.md ("## Probe solvers")
    python bench/probe_solvers.py --quick              # after 2 epochs, 2 points; prints only
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import (
    bench_parser,
    cpu_seconds,
    init_single_process,
    machine_line,
    md_table,
    publish,
    quiet_stdout,
    run_config,
    spread,
    writes_docs,
)

HEADING = "## Probe solvers"
AFTER = "## Probe share"
PROBE_BATCH_KEY = "scheduler.params.probe.batch_size"


SHIPPED = "shipped: Lanczos, warm start"
LANCZOS_COLD = "Lanczos, random start"
PAPER = "paper: power iteration, 10 HVPs"
FLOOR = "floor: setup + 1 HVP"
REFERENCE = "reference: Lanczos, 30 steps, tol 0"
PAPER_HVPS = 10
"""The paper times its probe with 10 power iterations (paper.txt, "Extra Computational Cost")."""


def power_iteration_label(tol: float) -> str:
    """Row label of the power iteration that stops on ``tol``, e.g. ``tol 1e-3``."""
    mantissa, exponent = f"{tol:.0e}".split("e")
    text = f"{mantissa}e{int(exponent)}" if tol > 0 and float(f"{tol:.0e}") == tol else f"{tol:g}"
    return f"power iteration, tol {text} (ds_twophase before 0.1 Lanczos)"


@dataclass
class Solve:
    """One probe by one solver."""

    value: float
    hvps: int
    seconds: float
    """Wall time of the whole probe (loading the micro-batches included)."""
    layer: list[str]


def power_iteration(
    probe: Any, model: torch.nn.Module, device: Any, max_iters: int, tol: float
) -> Solve:
    """The bench's reference implementation of the paper's probe (Sec. 3.2): power iteration,
    ``v <- Hv / ||Hv||``, with the Rayleigh quotient ``v . Hv`` (``v`` of unit norm) as the
    estimate. Not shipped code (ds_twophase probes with Lanczos); it is here to time the paper's
    method with the library's own parts, so that only the iteration differs from the shipped
    rows: the probe samples and micro-batches of ``probe`` (a ``HessianProbe``), its layer
    choice, the seeded random start vector, the functional view and exact HVP engine of
    ``ds_twophase.probe`` (``Functional``, ``HessianOperator``), the model in eval mode with the
    RNG states restored afterwards.
    Stops after ``max_iters`` HVPs, or when the estimate changes by less than ``tol``
    (relative) between two HVPs, or on a non-finite or zero HVP."""
    from torch.utils.data import default_collate

    from ds_twophase.probe import (
        Functional,
        HessianOperator,
        preserve_rng_state,
        probe_modes,
        resolve_layer,
        start_vector,
    )

    cfg = probe.config
    t0 = time.perf_counter()
    batches = []
    for first in range(0, len(probe.indices), cfg.micro_batch_size):
        chunk = probe.indices[first : first + cfg.micro_batch_size]
        x, y = default_collate([probe.dataset[i] for i in chunk])
        batches.append((x, y))  # on the host: the operator moves one micro-batch at a time
    layer = resolve_layer(model, cfg.layer, batches[0][0].to(device))
    budget = None if cfg.max_graph_mb is None else int(cfg.max_graph_mb * 2**20)
    samples = len(probe.indices)
    estimate, hvps = math.nan, 0
    with probe_modes(model, "eval"), preserve_rng_state(), torch.enable_grad():
        fn = Functional(model, probe.loss_fn, layer)
        v = start_vector(fn.num_params, cfg.seed).to(fn.device, fn.dtype)
        weighted_hvp = HessianOperator(fn, batches, "exact", budget)
        while hvps < max_iters:
            hv = weighted_hvp(v) / samples  # the engine sums n_i * H_i v over micro-batches
            hvps += 1
            earlier, estimate = estimate, float(torch.dot(v, hv))
            length = float(torch.linalg.vector_norm(hv))
            if not math.isfinite(estimate) or not math.isfinite(length) or length == 0.0:
                break
            if hvps > 1 and abs(estimate - earlier) < tol * abs(estimate):
                break
            v = hv / length
    return Solve(estimate, hvps, time.perf_counter() - t0, layer)


def probe_solve(probe: Any, model: torch.nn.Module, device: Any) -> Solve:
    """One call of a ``HessianProbe`` (the shipped code path), as a ``Solve``."""
    outcome = probe(model, device)
    if not outcome.ok:
        raise SystemExit(f"the probe failed: {outcome.error}")
    return Solve(outcome.value, outcome.iterations, outcome.seconds, list(outcome.layer or []))


@dataclass
class SolverRows:
    """Per probe point and solver: wall seconds, CPU seconds, HVPs, value."""

    trained_first: int
    epoch_batches: float
    """Global batches in one epoch of training data."""
    probe_batch: int
    micro_batch: int
    max_iters: int
    tol: float
    layer: str = ""
    layer_params: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_cpu: list[float] = field(default_factory=list)
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def probe_solvers(
    config: str, tmp: str, train_first: int, points: int, probe_batch: int | None
) -> SolverRows:
    """Train ``train_first`` epochs at 2048 / 256, then ``points`` times: one more epoch and
    every solver's probe on the same weights (order rotating). The warm-started probe has no
    previous vector at its first call, so the first point is not counted."""
    from dataclasses import replace

    from ds_twophase.probe import HessianProbe
    from ds_twophase.trainer import Trainer

    sets = ["train_batch_size=2048", "train_micro_batch_size_per_gpu=256"]
    sets.append(f"trainer.output_dir={tmp}")
    if probe_batch is not None:
        sets.append(f"{PROBE_BATCH_KEY}={probe_batch}")
    run = run_config(config, sets)
    trainer = Trainer(run)
    if trainer.probe is None:
        raise SystemExit(f"{config}: no Hessian probe configured (TwoPhaseLR needed)")
    base = trainer.probe  # never called: the source of the filled-in settings
    cfg = base.config
    if cfg.method != "exact" or cfg.redraw or cfg.bn_mode != "eval":
        raise SystemExit(
            "part 3 needs probe.method 'exact', probe.bn_mode 'eval' and probe.redraw false "
            "(one probe batch for every solver)"
        )

    def probe(**changes: Any) -> Any:
        return HessianProbe(
            base.dataset,
            base.loss_fn,
            replace(cfg, **changes),
            batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size,
            seed=cfg.seed,
            zero_stage=run.zero_stage,
        )

    shipped = probe()
    cold = probe(warm_start=False)
    floor = probe(warm_start=False, max_iters=1)
    reference = probe(warm_start=False, max_iters=30, tol=0.0)
    solvers: dict[str, Callable[[torch.nn.Module, Any], Solve]] = {
        SHIPPED: lambda m, d: probe_solve(shipped, m, d),
        LANCZOS_COLD: lambda m, d: probe_solve(cold, m, d),
        PAPER: lambda m, d: power_iteration(base, m, d, PAPER_HVPS, 0.0),
        power_iteration_label(cfg.tol): lambda m, d: power_iteration(
            base, m, d, cfg.max_iters, cfg.tol
        ),
        FLOOR: lambda m, d: probe_solve(floor, m, d),
        REFERENCE: lambda m, d: probe_solve(reference, m, d),
    }
    module, device = trainer.engine.module, trainer.engine.device
    out = SolverRows(
        train_first,
        len(trainer.splits.train) / trainer.train_batch,
        len(base.indices),
        cfg.micro_batch_size,
        cfg.max_iters,
        cfg.tol,
    )
    for label in solvers:
        out.rows[label] = {"seconds": [], "cpu": [], "iters": [], "value": []}
    modules = dict(module.named_modules())
    for epoch in range(1, train_first + 1):
        trainer.train_epoch(epoch)
    labels = list(solvers)
    for i in range(points + 1):
        c0, t0 = cpu_seconds(), time.perf_counter()
        trainer.train_epoch(train_first + 1 + i)
        epoch_seconds, epoch_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        measured = {}
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            c0 = cpu_seconds()
            solve = solvers[label](module, device)
            if not math.isfinite(solve.value):
                raise SystemExit(f"{label}: the estimate is not finite ({solve.value})")
            measured[label] = (solve.seconds, cpu_seconds() - c0, solve.hvps, solve.value)
            out.layer = ", ".join(solve.layer)
        if i == 0:
            names = out.layer.split(", ")
            out.layer_params = sum(p.numel() for n in names for p in modules[n].parameters())
            continue
        out.epoch_seconds.append(epoch_seconds)
        out.epoch_cpu.append(epoch_cpu)
        for label, (sec, cpu, iters, value) in measured.items():
            row = out.rows[label]
            row["seconds"].append(sec)
            row["cpu"].append(cpu)
            row["iters"].append(iters)
            row["value"].append(value)
    return out


def relative_errors(d: SolverRows, label: str) -> list[float]:
    """Per probe point: |value - reference| / |reference|."""
    pairs = zip(d.rows[label]["value"], d.rows[REFERENCE]["value"], strict=True)
    return [abs(a - b) / abs(b) for a, b in pairs]


def solver_table(d: SolverRows) -> str:
    """Medians over the probe points, one row per solver."""
    med = statistics.median
    epoch, epoch_cpu = med(d.epoch_seconds), med(d.epoch_cpu)
    rows = []
    for label, row in d.rows.items():
        errors = relative_errors(d, label)
        error = "-" if label == REFERENCE else f"{med(errors):.1e}, {max(errors):.1e}"
        rows.append(
            [
                label, f"{med(row['seconds']):.3f}", f"{med(row['cpu']):.3f}",
                spread(row["iters"]), f"{med(row['seconds']) / epoch:.3f}",
                f"{med(row['cpu']) / epoch_cpu:.3f}", error,
            ]
        )  # fmt: skip
    header = [
        "probe", "s (wall)", "CPU s", "HVPs (min-max)", "probe / train epoch (wall)",
        "probe / train epoch (CPU)", "rel. error vs reference (median, max)",
    ]  # fmt: skip
    return md_table(header, rows, "lrrrrrr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = bench_parser(__doc__, "after 2 epochs, 2 probe points")
    parser.add_argument("--first", type=int, help="training epochs before the first point")
    parser.add_argument("--points", type=int, help="probe points counted")
    parser.add_argument("--probe-batch", type=int, help="probe batch size (default: the config's)")
    args = parser.parse_args(argv)
    if args.probe_batch is not None and args.probe_batch < 1:
        parser.error(f"--probe-batch must be >= 1, got {args.probe_batch}")
    args.first = args.first if args.first is not None else (2 if args.quick else 20)
    args.points = args.points if args.points is not None else (2 if args.quick else 6)
    if args.first < 0 or args.points < 1:
        parser.error("--first must be >= 0 and --points >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, print the markdown section, and write it to the docs."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 " + shlex.join(["python", "bench/probe_solvers.py", *sys.argv[1:]])
    started = datetime.datetime.now()
    init_single_process()
    print(f"{args.first} epochs, then {args.points} probe points", flush=True)
    with tempfile.TemporaryDirectory(prefix="probe_solvers_") as tmp, quiet_stdout():
        d = probe_solvers(
            args.config, str(Path(tmp) / "run"), args.first, args.points, args.probe_batch
        )
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}. "
            f"Config: `{args.config}` at 2048 / 256, probe batch {d.probe_batch} in micro-batches "
            f"of {d.micro_batch}, `max_iters` {d.max_iters}, `tol` {d.tol:g}, layer `{d.layer}` "
            f"({d.layer_params:,} parameters); after {d.trained_first} training epochs, "
            f"{len(d.epoch_seconds)} probe points (medians). The paper timed {PAPER_HVPS} power "
            f"iterations. An epoch is {d.epoch_batches:.1f} global batches.",
            "",
            solver_table(d),
        ]
    )
    publish(HEADING, section, writes_docs(args), AFTER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
