"""Benchmark: how the Hessian probe's batch size changes hmax and its epoch-to-epoch comparisons.

The two-phase schedule decays the LR at the end of a convergence epoch when ``h_prev < hmax and
f_prev < f``: what matters is whether hmax rose or fell since the previous epoch, on the epochs
where the training loss rose. In one process (a gloo group of one rank):

1. Trains ``--config`` as ``python -m ds_twophase.train`` does (``Trainer.train_epoch`` and
   ``ds_twophase.schedulers.end_of_epoch.epoch_end``, the config's own probe deciding; evaluation and checkpoints
   left out). ``--verify`` then runs the trainer as a subprocess and compares every epoch.
2. From epoch ``--from-epoch`` on, after the epoch's decision, measures hmax of the trained
   module on nested probe batches (``select_probe_indices`` with each size: the run's own rule)
   with ``principal_eigenvalue(..., max_iters=60, tol=1e-6, bn_mode="eval")``, which leaves
   model, gradients and RNG states untouched.
3. Tables per size: deviation from the whole training set, agreement of the direction of the
   hmax change, cost; the convergence-phase rule (``TwoPhaseDecision``) replayed over each
   size's (hmax, loss) sequence: ONE trajectory, so whether the decision inputs agree, not what
   separate runs with another probe batch would do.

    python bench/probe_batch.py          # 60 epochs, from epoch 20, all sizes; writes
                                         # docs/benchmarks.md ("## Probe batch size")
    python bench/probe_batch.py --quick  # 8 epochs from epoch 4, sizes 128,512,full; prints

Run it with ``OMP_NUM_THREADS=1``. ``--json PATH`` saves the per-epoch measurements.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from common import (
    bench_parser,
    cpu_seconds,
    git_state,
    init_single_process,
    machine_line,
    md_table,
    package_digest,
    publish,
    quiet_stdout,
    run_config,
    train_and_read,
    writes_docs,
)

HEADING = "## Probe batch size"
AFTER = "## Hessian probe"
SIZES = "128,256,512,1024,2048,full"
QUICK_SIZES = "128,512,full"
MICRO = 256
MAX_ITERS = 60
TOL = 1e-6


@dataclass
class Measurement:
    """One ``principal_eigenvalue`` call on one probe batch (wall and CPU seconds)."""

    value: float
    iterations: int
    converged: bool
    seconds: float
    cpu: float


@dataclass
class EpochRow:
    """One training epoch (CPU seconds of ``Trainer.train_epoch``), the run's decision and own
    probe (hmax, HVPs, CPU seconds of the epoch end), and from ``--from-epoch`` on the
    measurements by probe batch size."""

    epoch: int
    train_loss: float
    train_cpu: float
    decision: str | None
    run_hmax: float | None
    run_probe_cpu: float | None = None
    run_probe_iterations: int | None = None
    probes: dict[int, Measurement] = field(default_factory=dict)


@dataclass
class Study:
    """Everything one invocation measured (``source``: git commit and state of
    ``ds_twophase/`` at the start; ``solver``: first line of ``ds_twophase.probe.eigen``'s
    docstring)."""

    config: str
    sizes: list[int]
    full: int
    from_epoch: int
    epochs: int
    layer: str
    layer_setting: str
    micro: int
    run_probe: str
    run_probe_size: int
    nested_matches_run_probe: bool
    """The first ``run_probe_size`` samples of the permutation are the run's probe batch."""
    solver: str
    source: str
    digest: str
    rows: list[EpochRow] = field(default_factory=list)
    start_check: dict[int, float] = field(default_factory=dict)
    """Per size: largest relative change with start seed + 1 (first and last measured epoch)."""
    wall: float = 0.0
    verify: str | None = None

    @property
    def measured(self) -> list[EpochRow]:
        """The epochs with probes of every size."""
        return [r for r in self.rows if r.epoch >= self.from_epoch]

    @property
    def switch_epoch(self) -> int | None:
        """The epoch at which the run itself switched to the convergence phase."""
        return next((r.epoch for r in self.rows if r.decision == "switch"), None)

    def decays(self) -> list[int]:
        """The epochs at which the run itself decayed the LR."""
        return [r.epoch for r in self.rows if r.decision == "decay"]


def probe_batches(trainer: Any, sizes: list[int], micro: int) -> tuple[dict[int, list[Any]], bool]:
    """Per size, the micro-batches of ``select_probe_indices(len, size, seed)`` (the run's
    probe-batch rule: the first ``size`` of one seeded permutation, so the subsets are nested),
    on the engine's device; and whether the run's own probe batch is among them."""
    from ds_twophase.probe import select_probe_indices
    from ds_twophase.trainer import to_engine

    dataset, cfg = trainer.splits.train, trainer.probe.config
    out = {}
    for n in sizes:
        chosen = select_probe_indices(len(dataset), n, int(cfg.seed))
        out[n] = [to_engine(trainer.engine, dataset[chosen[i : i + micro]])
                  for i in range(0, len(chosen), micro)]  # fmt: skip
    own = select_probe_indices(len(dataset), int(cfg.batch_size), int(cfg.seed))
    return out, own == list(trainer.probe.indices)


def measure(model: Any, batches: list[Any], layer: Any, seed: int) -> Measurement:
    """hmax of one probe batch, converged as far as ``MAX_ITERS`` / ``TOL`` allow."""
    from ds_twophase.probe import principal_eigenvalue
    from ds_twophase.trainer import cross_entropy

    c0 = cpu_seconds()
    res = principal_eigenvalue(
        model, cross_entropy, batches, layer, max_iters=MAX_ITERS, tol=TOL, bn_mode="eval",
        seed=seed,
    )  # fmt: skip
    return Measurement(res.value, res.iterations, res.converged, res.seconds, cpu_seconds() - c0)


def run_study(args: argparse.Namespace, tmp: str) -> Study:
    """Train the config and probe every size from ``args.from_epoch`` on."""
    from ds_twophase.probe import eigen, resolve_layer
    from ds_twophase.schedulers.end_of_epoch import epoch_end
    from ds_twophase.trainer import Trainer

    source, digest = git_state(), package_digest()
    init_single_process()
    sets = [f"trainer.output_dir={tmp}"]
    if args.epochs is not None:
        sets.append(f"trainer.epochs={args.epochs}")
    run = run_config(args.config, sets)
    with quiet_stdout():
        trainer = Trainer(run)
    if trainer.probe is None:
        raise SystemExit(f"{args.config}: no Hessian probe configured (TwoPhaseLR needed)")
    epochs = trainer.config.epochs
    if not 1 <= args.from_epoch <= epochs - 1:
        raise SystemExit(f"--from-epoch must lie in 1..{epochs - 1} (the run has {epochs} epochs)")
    full = len(trainer.splits.train)
    sizes = parse_sizes(args.sizes, full)
    batches, nested_ok = probe_batches(trainer, sizes, args.micro)
    cfg = trainer.probe.config
    module = trainer.engine.module
    run_probe = (
        f"{cfg.batch_size} samples / micro-batches of {cfg.micro_batch_size}, max_iters "
        f"{cfg.max_iters}, tol {cfg.tol:g}, {cfg.method}, warm_start {cfg.warm_start}"
    )
    layer = ", ".join(resolve_layer(module, cfg.layer, batches[sizes[0]][0][0][:2]))
    solver = (eigen.__doc__ or "").strip().splitlines()[0]
    study = Study(args.config, sizes, full, args.from_epoch, epochs, layer, json.dumps(cfg.layer),
                  args.micro, run_probe, int(cfg.batch_size), nested_ok, solver, source, digest)  # fmt: skip
    print(f"{args.config}: {epochs} epochs, probes of {sizes} from epoch {args.from_epoch}, "
          f"layer {layer}; {solver}", flush=True)  # fmt: skip
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        c0 = cpu_seconds()
        loss, _, _ = trainer.train_epoch(epoch)
        train_cpu = cpu_seconds() - c0
        if not math.isfinite(loss):
            raise SystemExit(f"epoch {epoch}: training loss is {loss}; the run stopped")
        c0 = cpu_seconds()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            end = epoch_end(trainer.engine, loss, trainer.probe)
        rec = end.record
        row = EpochRow(epoch, loss, train_cpu, rec.decision, rec.hmax)
        if end.probe is not None:
            row.run_probe_cpu, row.run_probe_iterations = cpu_seconds() - c0, end.probe.iterations
        if epoch >= args.from_epoch:
            for n in sizes:
                row.probes[n] = measure(module, batches[n], cfg.layer, int(cfg.seed))
            if epoch in (args.from_epoch, epochs):  # does the value depend on the start?
                for n in sizes:
                    other = measure(module, batches[n], cfg.layer, int(cfg.seed) + 1).value
                    diff = abs(other - row.probes[n].value) / abs(row.probes[n].value)
                    study.start_check[n] = max(study.start_check.get(n, 0.0), diff)
        study.rows.append(row)
        probes = " | ".join(
            f"{n}: {m.value:.6g} ({m.iterations} it)" for n, m in row.probes.items()
        )
        print(f"epoch {epoch}/{epochs} loss {loss:.5f} {rec.decision} {probes}", flush=True)
    study.wall = time.perf_counter() - t_start
    return study


def verify_against_trainer(study: Study, args: argparse.Namespace, tmp: str) -> str:
    """Run ``python -m ds_twophase.train`` on the same config (evaluation and checkpoints
    included) and compare every epoch's training loss, hmax and decision: a markdown table."""
    sets = ["trainer.progress=off"] + ([f"trainer.epochs={args.epochs}"] if args.epochs else [])
    ref, shown, _ = train_and_read(args.config, sets, str(Path(tmp) / "verify"))
    pairs = list(zip(ref, study.rows, strict=False))
    cells = [
        f"`{shown}`" + (" (`ds_twophase` changed meanwhile)" if package_digest() != study.digest else ""),
        f"{len(ref)} / {len(study.rows)}",
        f"{max(abs(a['train_loss'] - r.train_loss) for a, r in pairs):.3g}",
        "yes" if all(a["hmax"] == r.run_hmax for a, r in pairs) else "NO",
        "yes" if all(a["decision"] == r.decision for a, r in pairs) else "NO",
    ]  # fmt: skip
    header = ["same training as a normal run", "epochs (it / here)", "largest train-loss diff",
              "hmax equal", "decisions equal"]  # fmt: skip
    return md_table(header, [cells], "lrrll")


def parse_sizes(text: str, full: int) -> list[int]:
    """Sorted unique sizes from a comma list (``full`` = the whole training set, always
    included as the reference)."""
    tokens = [t.strip().lower() for t in text.split(",") if t.strip()]
    sizes = {full, *(full if t == "full" else int(t) for t in tokens)}
    if bad := [n for n in sizes if not 1 <= n <= full]:
        raise SystemExit(f"--sizes: {bad} not between 1 and the training set's {full}")
    return sorted(sizes)


def rel_devs(study: Study, n: int) -> list[float]:
    """``|h_n - h_full| / |h_full|`` per measured epoch."""
    return [
        abs(r.probes[n].value - r.probes[study.full].value) / abs(r.probes[study.full].value)
        for r in study.measured
    ]


def sign_agreement(study: Study, n: int, loss_rose_only: bool) -> tuple[int, int]:
    """(agreeing, total) consecutive-epoch pairs: sign of the hmax change on size ``n`` against
    the whole training set's."""
    pairs = [(a, b) for a, b in pairwise(study.measured)
             if not loss_rose_only or b.train_loss > a.train_loss]  # fmt: skip
    agree = sum(
        (b.probes[n].value > a.probes[n].value) == (b.probes[study.full].value > a.probes[study.full].value)
        for a, b in pairs
    )  # fmt: skip
    return agree, len(pairs)


def replay(epochs: list[int], hmax: list[float], loss: list[float]) -> list[int]:
    """Epochs that decay under the convergence-phase rule (``ds_twophase.schedulers.decision``), the first epoch being
    the switch (``h_prev, f_prev = hmax, loss``): the schedule's own state machine
    (``TwoPhaseDecision``), forced to switch at its first epoch, replays the sequence."""
    from ds_twophase.schedulers import TwoPhaseDecision

    rule = TwoPhaseDecision(total_epochs=len(epochs), patience=1, threshold=0.0,
                            extra_epochs_ratio=0.0, decay_factor=0.5, max_exploration_epochs=1)  # fmt: skip
    steps = zip(epochs, hmax, loss, strict=True)
    return [e for e, h, f in steps if rule.end_epoch(f, lambda h=h: h).decision == "decay"]


def replay_rows(rows: list[EpochRow], hmax: Callable[[EpochRow], float | None]) -> list[int]:
    """Decay epochs of ``replay`` over ``rows`` with hmax read by ``hmax``."""
    return replay([r.epoch for r in rows], [hmax(r) for r in rows], [r.train_loss for r in rows])


def replay_size(study: Study, n: int, switch: int) -> list[int]:
    """Decay epochs of size ``n``'s hmax sequence with the switch at epoch ``switch``."""
    return replay_rows(
        [r for r in study.measured if r.epoch >= switch], lambda r: r.probes[n].value
    )


def replay_run_probe(study: Study) -> list[int] | None:
    """The rule over the run's own probe values from its switch (must give its own decays)."""
    rows = [r for r in study.rows if study.switch_epoch and r.epoch >= study.switch_epoch]
    if not rows or any(r.run_hmax is None for r in rows):
        return None
    return replay_rows(rows, lambda r: r.run_hmax)


def epochs_text(epochs: list[int]) -> str:
    """``21, 25, 30`` or ``none``."""
    return ", ".join(str(e) for e in epochs) if epochs else "none"


def size_label(study: Study, n: int) -> str:
    """``512``, ``2048 (the run's probe batch)`` or ``16000 (whole training set)``."""
    if n == study.full:
        return f"{n} (whole training set)"
    if n == study.run_probe_size and study.nested_matches_run_probe:
        return f"{n} (the run's probe batch)"
    return str(n)


def fraction(pair: tuple[int, int]) -> str:
    """``17/20 (0.85)``."""
    agree, total = pair
    return f"{agree}/{total} ({agree / total:.2f})" if total else "0/0"


def summary_table(study: Study) -> str:
    """Per size: deviation from the whole set, sign agreement, cost against a training epoch,
    and how much the value moves with another start vector."""
    med = statistics.median
    epoch_cpu = med(r.train_cpu for r in study.measured)
    rows = []
    for n in study.sizes:
        devs = rel_devs(study, n)
        ms = [r.probes[n] for r in study.measured]
        cpu = med(m.cpu for m in ms)
        above = sum(r.probes[n].value > r.probes[study.full].value for r in study.measured)
        rows.append(
            [
                size_label(study, n), f"{med(devs):.1e}", f"{max(devs):.1e}",
                f"{above} of {len(ms)}", fraction(sign_agreement(study, n, False)),
                fraction(sign_agreement(study, n, True)), f"{med(m.seconds for m in ms):.2f}",
                f"{cpu:.2f}", f"{cpu / epoch_cpu:.2f}", f"{med(m.iterations for m in ms):g}",
                f"{sum(not m.converged for m in ms)} of {len(ms)}",
                f"{study.start_check.get(n, math.nan):.1e}",
            ]
        )  # fmt: skip
    header = [
        "probe batch", "rel. dev. from whole set: median", "max", "epochs above whole set",
        "sign of h_t - h_t-1 agrees with whole set: all pairs", "pairs where the loss rose",
        "median s (wall)", "median CPU s", "CPU / training epoch", "median HVPs",
        "not converged", "other start vector: rel. diff",
    ]  # fmt: skip
    return md_table(header, rows, "lrrrrrrrrrrr")


def run_probe_table(study: Study) -> str:
    """The run's own probe (its settings, same weights, same probe batch) against the converged
    value of the same samples, and its cost."""
    med = statistics.median
    rows = [r for r in study.rows if r.run_hmax is not None and r.run_probe_cpu is not None]
    if not rows:
        return ""
    epoch_cpu = med(r.train_cpu for r in study.rows)
    n = study.run_probe_size
    diffs = [
        abs(float(r.run_hmax) - r.probes[n].value) / abs(r.probes[n].value)
        for r in rows
        if n in r.probes and study.nested_matches_run_probe
    ]
    diff = f"{med(diffs):.1e} ({max(diffs):.1e})" if diffs else "-"
    header = ["run's own probe", "probes", "median HVPs", "CPU / training epoch", "rel. diff "
              f"from converged {n}, median (max)"]  # fmt: skip
    cells = [study.run_probe, len(rows), f"{med(r.run_probe_iterations or 0 for r in rows):g}",
             f"{med(float(r.run_probe_cpu or 0) for r in rows) / epoch_cpu:.2f}", diff]  # fmt: skip
    return md_table(header, [cells], "lrrrr")


def switches(study: Study) -> list[int]:
    """Switch epochs to replay from: ``--from-epoch``, and the run's own if later."""
    out = [study.from_epoch]
    if study.switch_epoch is not None and study.switch_epoch > study.from_epoch:
        out.append(study.switch_epoch)
    return out


def replay_table(study: Study) -> str:
    """Per size and switch epoch: decay epochs of the replayed rule, and whether they equal the
    whole set's and the run's probe batch's. Last row: the replay over the run's own probe
    values against the run's own decisions (a check of ``replay``)."""
    n_run = study.run_probe_size
    ref = n_run if n_run in study.sizes and study.nested_matches_run_probe else None
    header = ["probe batch"]
    for sw in switches(study):
        what = " (the run's)" if sw == study.switch_epoch else ""
        header += [f"decay epochs, switch at {sw}{what}", "same as whole set"]
        header += [f"same as {ref}"] if ref is not None and ref != study.full else []
    rows = []
    for n in study.sizes:
        row = [size_label(study, n)]
        for sw in switches(study):
            d = replay_size(study, n, sw)
            row += [epochs_text(d), "yes" if d == replay_size(study, study.full, sw) else "NO"]
            if ref is not None and ref != study.full:
                row.append("yes" if d == replay_size(study, ref, sw) else "NO")
        rows.append(row)
    check = replay_run_probe(study)
    if check is not None:
        row = [f"check: run's own hmax from its switch ({study.switch_epoch})", epochs_text(check)]
        row.append("run decayed at " + epochs_text(study.decays()))
        rows.append(row + [""] * (len(header) - len(row)))
    return md_table(header, rows)


def epoch_table(study: Study) -> str:
    """Every measured epoch: loss, the run's decision and hmax, and hmax per size."""
    rows, prev = [], None
    for r in study.measured:
        rose = "yes" if prev is not None and r.train_loss > prev.train_loss else ""
        run_h = "" if r.run_hmax is None else f"{r.run_hmax:.5g}"
        vals = [f"{r.probes[n].value:.5g}" for n in study.sizes]
        rows.append([r.epoch, f"{r.train_loss:.5f}", rose, r.decision, run_h, *vals])
        prev = r
    header = ["epoch", "train loss", "loss rose", "decision", "run's hmax"]
    header += [f"hmax, {n}" for n in study.sizes]
    return md_table(header, rows, "rrll" + "r" * (1 + len(study.sizes)))


def render(study: Study, command: str, started: datetime.datetime) -> str:
    """The markdown section: setting, then tables."""
    out = [
        HEADING,
        "",
        f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}, 1 torch "
        f"thread. Config: `{study.config}` ({study.epochs} epochs, one in-process run). Code: "
        f'{study.source}; solver: "{study.solver}". Run time: {study.wall / 60:.1f} min. From '
        f"epoch {study.from_epoch} on, hmax of the same weights on nested probe batches (the "
        f"first n of the seeded permutation of the {study.full:,} training indices the run's "
        f"probe batch is drawn from), micro-batches of {study.micro}, layer `{study.layer}` "
        f"(`{study.layer_setting}`), `principal_eigenvalue(..., max_iters={MAX_ITERS}, "
        f'tol={TOL:g}, bn_mode="eval")`; the other start vector (seed + 1) at the first and last '
        "measured epoch. The replay runs the convergence-phase rule over ONE trajectory.",
    ]
    if study.verify:
        out += ["", study.verify]
    for table in (summary_table(study), run_probe_table(study), replay_table(study)):
        out += ["", table] if table else []
    out += ["", "<details><summary>Per epoch</summary>", "", epoch_table(study), "", "</details>"]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` fills in what is not given."""
    p = bench_parser(__doc__, f"8 epochs from 4, sizes {QUICK_SIZES}")
    p.add_argument("--from-epoch", type=int, help="first probed epoch (20; --quick: 4)")
    p.add_argument("--sizes", help=f"probe batch sizes, 'full' = the training set ({SIZES})")
    p.add_argument("--epochs", type=int, help="trainer.epochs (the config's; --quick: 8)")
    p.add_argument("--micro", type=int, default=MICRO, help="probe micro-batch (%(default)s)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="compare with a `python -m ds_twophase.train` run (not with --quick)")  # fmt: skip
    p.add_argument("--json", help="save the per-epoch measurements to this file")
    args = p.parse_args(argv)
    if args.from_epoch is None:
        args.from_epoch = 4 if args.quick else 20
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    if args.epochs is None and args.quick:
        args.epochs = 8
    args.verify = not args.quick if args.verify is None else args.verify
    args.write_docs = writes_docs(args)
    if args.micro < 1:
        p.error("--micro must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train, probe, analyse, print the markdown section, and write it to the docs."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 " + shlex.join(["python", "bench/probe_batch.py", *sys.argv[1:]])
    started = datetime.datetime.now()
    with tempfile.TemporaryDirectory(prefix="probe_batch_") as tmp:
        study = run_study(args, str(Path(tmp) / "run"))
        if args.json:
            Path(args.json).write_text(json.dumps(asdict(study), indent=1) + "\n")
        if args.verify:
            study.verify = verify_against_trainer(study, args, tmp)
    publish(HEADING, render(study, command, started), args.write_docs, AFTER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
