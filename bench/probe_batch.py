"""Benchmark: how the Hessian probe's batch size changes hmax and its epoch-to-epoch comparisons.

The two-phase schedule (DESIGN.md, "The two-phase schedule") decays the LR at the end of a
convergence epoch when ``h_prev < hmax and f_prev < f``: what matters is whether hmax rose or
fell since the previous epoch, on the epochs where the training loss rose. The probe batch
(DESIGN.md, "The Hessian probe") is by default one global train batch; this script measures, on
one training run, how much a smaller probe batch changes those comparisons.

What it does, in one process (a gloo group of one rank, like ``bench/trainer_overhead.py``):

1. Trains ``--config`` (default ``configs/mnist1d/two_phase.json``) with
   ``ds_twophase.trainer.Trainer`` exactly as ``python -m ds_twophase.train`` does: per epoch
   ``Trainer.train_epoch`` and ``ds_twophase.probe.epoch_end`` (the schedule's decision, with
   the config's own probe where the schedule needs it). Evaluation and checkpoints are left
   out; they do not change the training. ``--verify`` (default on, except with ``--quick``)
   afterwards runs ``python -m ds_twophase.train`` on the same config as a subprocess and
   compares every epoch's training loss, hmax and decision with the in-process run.
2. From epoch ``--from-epoch`` (default 20) to the end, after the epoch's decision, measures
   hmax on the trained module (``engine.module``) for every probe batch size of ``--sizes``
   (default 128, 256, 512, 1024, 2048 and the whole training set). The subsets are nested: the
   first n of one seeded permutation of the training indices (the permutation
   ``ds_twophase.probe.select_probe_indices`` draws from, seed = the config's seed), so the
   2048-sample subset is the run's own probe batch. Each is probed in micro-batches of 256 with
   ``ds_twophase.probe.principal_eigenvalue(model, loss, batches, layer, max_iters=60,
   tol=1e-6, bn_mode="eval")``, the layer and loss being the trainer's (``probe.layer``,
   ``ds_twophase.epoch.cross_entropy``). ``principal_eigenvalue`` leaves model, gradients and
   RNG states untouched, so the measurements do not change the training.
3. Reports, per size: median and max of ``|h_n - h_full| / |h_full|`` over the measured
   epochs; the fraction of consecutive-epoch pairs where ``sign(h_t - h_{t-1})`` agrees with
   the whole training set's (all pairs, and only the pairs where the training loss rose, the
   only ones that can trigger a decay); median probe seconds (wall and CPU), CPU seconds per
   sample and HVPs. It then replays the convergence-phase rule over the recorded
   ``(hmax, loss)`` sequence once per size, taking ``--from-epoch`` as the switch epoch (and
   again from the run's own switch epoch), and lists the epochs that would decay. The replay
   runs over ONE trajectory, trained with the config's own probe: it shows whether the decision
   inputs agree, not what separate runs with another probe batch would do.

    python bench/probe_batch.py          # 60 epochs, measured from epoch 20, all sizes;
                                         # writes docs/benchmarks.md ("## Probe batch size")
    python bench/probe_batch.py --quick  # 8 epochs from epoch 4, sizes 128,512,full (about a
                                         # minute); prints only

Run it with ``OMP_NUM_THREADS=1`` (the script also sets one torch thread). ``--json PATH``
saves the per-epoch measurements. Only the ``## Probe batch size`` section of
``docs/benchmarks.md`` is written (placed after ``## Hessian probe``); ``--quick`` writes
nothing unless ``--write-docs`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from docs_section import write_section  # noqa: E402
from trainer_overhead import (  # noqa: E402
    cpu_seconds,
    init_single_process,
    machine_line,
    quiet_stdout,
)

CONFIG = "configs/mnist1d/two_phase.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Probe batch size"
AFTER = "## Hessian probe"
SIZES = "128,256,512,1024,2048,full"
QUICK_SIZES = "128,512,full"
MICRO = 256
MAX_ITERS = 60
TOL = 1e-6


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One ``principal_eigenvalue`` call on one probe batch."""

    value: float
    iterations: int
    converged: bool
    seconds: float
    """Wall time of the call."""
    cpu: float
    """CPU seconds of this process during the call."""


@dataclass
class EpochRow:
    """One training epoch and, from ``--from-epoch`` on, the probes after it."""

    epoch: int
    train_loss: float
    train_seconds: float
    """Wall time of ``Trainer.train_epoch``."""
    train_cpu: float
    decision: str | None
    """The schedule's decision at this epoch end (``none``, ``plateau``, ``switch``, ...)."""
    run_hmax: float | None
    """hmax of the run's own probe (the config's settings) when the schedule measured it."""
    lr: float
    run_probe_seconds: float | None = None
    """Wall time of the run's own probe this epoch (when it ran)."""
    run_probe_cpu: float | None = None
    """CPU seconds of the epoch end (the run's probe and the decision) when the probe ran."""
    run_probe_iterations: int | None = None
    probes: dict[int, Measurement] = field(default_factory=dict)
    """By probe batch size."""


@dataclass
class Study:
    """Everything one invocation measured."""

    config: str
    sizes: list[int]
    full: int
    from_epoch: int
    epochs: int
    layer: str
    """The probed module(s)."""
    layer_setting: str
    """The config's ``probe.layer`` as JSON."""
    micro: int
    """Probe micro-batch size of the measurements."""
    run_probe: str
    """The config's probe settings, in words."""
    run_probe_size: int
    nested_matches_run_probe: bool
    """The first ``run_probe_size`` samples of the permutation are the run's probe batch."""
    solver: str
    """First line of ``ds_twophase.probe.eigen``'s docstring (names the eigen-solver)."""
    source: str
    """Git commit and the state of ``ds_twophase/`` when the run started."""
    digest: str
    """``package_digest()`` when the run started."""
    rows: list[EpochRow] = field(default_factory=list)
    start_check: dict[int, float] = field(default_factory=dict)
    """Per size: the largest relative difference between the value from the seeded start vector
    and from another start vector (seed + 1), at the first and the last measured epoch."""
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


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
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


def build_run(config: str, out: str, epochs: int | None) -> Any:
    """The validated ``RunConfig`` of ``config`` as the trainer would run it (own batch sizes),
    output under ``out``, no progress bar."""
    from ds_twophase.config import load_config, validate_config

    overrides = [f"trainer.output_dir={out}", "trainer.progress=off"]
    if epochs is not None:
        overrides.append(f"trainer.epochs={epochs}")
    return validate_config(load_config(str(ROOT / config), overrides), world_size=1)


def probe_batches(
    trainer: Any, sizes: list[int], micro: int
) -> tuple[dict[int, list[tuple[torch.Tensor, torch.Tensor]]], bool]:
    """Per size, the micro-batches of the first ``size`` samples of one seeded permutation of
    the training indices (sorted within the subset, as the trainer's probe batch is), on the
    engine's device. Also whether the subset of the run's probe-batch size is the run's own
    probe batch."""
    from ds_twophase.epoch import to_engine

    dataset = trainer.splits.train
    cfg = trainer.probe.config
    # The permutation select_probe_indices(len, size, seed, draw=0) takes its first `size` of.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003)
    perm = torch.randperm(len(dataset), generator=gen).tolist()
    out: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for n in sizes:
        chosen = sorted(perm[:n])
        out[n] = [
            to_engine(trainer.engine, dataset[chosen[i : i + micro]])
            for i in range(0, len(chosen), micro)
        ]
    same = sorted(perm[: cfg.batch_size]) == list(trainer.probe.indices)
    return out, same


def measure(model: Any, batches: list[Any], layer: Any, seed: int) -> Measurement:
    """hmax of one probe batch, converged as far as ``MAX_ITERS`` / ``TOL`` allow."""
    from ds_twophase.epoch import cross_entropy
    from ds_twophase.probe import principal_eigenvalue

    c0 = cpu_seconds()
    res = principal_eigenvalue(
        model, cross_entropy, batches, layer, max_iters=MAX_ITERS, tol=TOL, bn_mode="eval",
        seed=seed,
    )  # fmt: skip
    return Measurement(res.value, res.iterations, res.converged, res.seconds, cpu_seconds() - c0)


def run_study(args: argparse.Namespace, tmp: str) -> Study:
    """Train the config and probe every size from ``args.from_epoch`` on."""
    from ds_twophase import dist
    from ds_twophase.probe import eigen, epoch_end
    from ds_twophase.trainer import Trainer

    source, digest = git_state(), package_digest()
    init_single_process()
    dist.release_deepspeed_shm()
    run = build_run(args.config, tmp, args.epochs)
    with quiet_stdout():
        trainer = Trainer(run)
    if trainer.probe is None:
        raise SystemExit(f"{args.config}: no Hessian probe configured (TwoPhaseLR needed)")
    epochs = trainer.tc.epochs
    if not 1 <= args.from_epoch <= epochs - 1:
        raise SystemExit(f"--from-epoch must lie in 1..{epochs - 1} (the run has {epochs} epochs)")
    full = len(trainer.splits.train)
    sizes = parse_sizes(args.sizes, full)
    batches, nested_ok = probe_batches(trainer, sizes, args.micro)
    cfg = trainer.probe.config
    module = trainer.engine.module
    study = Study(
        config=args.config,
        sizes=sizes,
        full=full,
        from_epoch=args.from_epoch,
        epochs=epochs,
        layer="",
        layer_setting=json.dumps(cfg.layer),
        micro=args.micro,
        run_probe=(
            f"{cfg.batch_size} samples in micro-batches of {cfg.micro_batch_size}, layer "
            f"{cfg.layer!r}, max_iters {cfg.max_iters}, tol {cfg.tol:g}, method {cfg.method}, "
            f"bn_mode {cfg.bn_mode}"
            + (f", warm_start {str(cfg.warm_start).lower()}" if hasattr(cfg, "warm_start") else "")
        ),
        run_probe_size=int(cfg.batch_size),
        nested_matches_run_probe=nested_ok,
        solver=(eigen.__doc__ or "").strip().splitlines()[0],
        source=source,
        digest=digest,
    )
    from ds_twophase.probe import resolve_layer

    study.layer = ", ".join(resolve_layer(module, cfg.layer, batches[sizes[0]][0][0][:2]))
    print(
        f"{args.config}: {epochs} epochs, probes of {sizes} from epoch {args.from_epoch}, "
        f"layer {study.layer}; {study.solver}",
        flush=True,
    )
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        c0, t0 = cpu_seconds(), time.perf_counter()
        loss, _ = trainer.train_epoch(epoch)
        train_seconds, train_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if not math.isfinite(loss):
            raise SystemExit(f"epoch {epoch}: training loss is {loss}; the run stopped")
        c0 = cpu_seconds()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            end = epoch_end(trainer.engine, loss, trainer.probe)
        end_cpu = cpu_seconds() - c0
        rec = end.record
        row = EpochRow(
            epoch=epoch,
            train_loss=loss,
            train_seconds=train_seconds,
            train_cpu=train_cpu,
            decision=rec.decision,
            run_hmax=rec.hmax,
            lr=float(trainer.engine.get_lr()[0]),
        )
        if end.probe is not None:
            row.run_probe_seconds = end.probe.seconds
            row.run_probe_cpu = end_cpu
            row.run_probe_iterations = end.probe.iterations
        if epoch >= args.from_epoch:
            for n in sizes:
                row.probes[n] = measure(module, batches[n], cfg.layer, int(cfg.seed))
            if epoch in (args.from_epoch, epochs):  # does the value depend on the start?
                for n in sizes:
                    other = measure(module, batches[n], cfg.layer, int(cfg.seed) + 1).value
                    diff = abs(other - row.probes[n].value) / abs(row.probes[n].value)
                    study.start_check[n] = max(study.start_check.get(n, 0.0), diff)
        study.rows.append(row)
        line = f"epoch {epoch}/{epochs} loss {loss:.5f} {rec.decision}"
        if rec.hmax is not None:
            line += f" (run's hmax {rec.hmax:.5g})"
        for n, m in row.probes.items():
            line += f" | {n}: {m.value:.6g} ({m.iterations} it, {m.seconds:.2f} s)"
        print(line, flush=True)
    study.wall = time.perf_counter() - t_start
    return study


def verify_against_trainer(study: Study, args: argparse.Namespace, tmp: str) -> str:
    """Run ``python -m ds_twophase.train`` on the same config and compare every epoch's training
    loss, hmax and decision with the in-process run; one line saying what matched."""
    digest = study.digest
    out = str(Path(tmp) / "verify")
    cmd = [sys.executable, "-m", "ds_twophase.train", "--config", args.config]
    for item in [f"trainer.output_dir={out}", "trainer.progress=off"] + (
        [f"trainer.epochs={args.epochs}"] if args.epochs is not None else []
    ):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    shown = "OMP_NUM_THREADS=1 " + shlex.join(["python", *cmd[1:]])
    print(f"verify: $ {shown}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        return f"the reference run `{shown}` failed with status {proc.returncode}"
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    ref = [json.loads(line) for line in lines if line.strip()]
    changed = package_digest() != digest
    if len(ref) != len(study.rows):
        return f"the reference run logged {len(ref)} epochs, this run {len(study.rows)}"
    loss_diff = max(
        abs(a["train_loss"] - r.train_loss) for a, r in zip(ref, study.rows, strict=True)
    )
    hmax_same = all(a["hmax"] == r.run_hmax for a, r in zip(ref, study.rows, strict=True))
    decisions_same = all(a["decision"] == r.decision for a, r in zip(ref, study.rows, strict=True))
    identical = loss_diff == 0.0 and hmax_same and decisions_same
    text = (
        f"`{shown}` (a normal run of the trainer, evaluation and checkpoints included) logged "
        + (
            "the same training loss, hmax and decision as this run at every one of the "
            f"{len(ref)} epochs (bit for bit)"
            if identical
            else f"training losses that differ from this run's by up to {loss_diff:.3g}, "
            f"hmax {'equal' if hmax_same else 'NOT equal'}, decisions "
            f"{'equal' if decisions_same else 'NOT equal'}"
        )
    )
    if changed:
        text += (
            " (note: the `ds_twophase` sources changed on disk while this script ran, so the "
            "reference run may have used other code)"
        )
    return text


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------
def parse_sizes(text: str, full: int) -> list[int]:
    """Sorted unique sizes from a comma list (``full`` = the whole training set, always
    included as the reference)."""
    sizes = {full}
    for token in text.split(","):
        token = token.strip().lower()
        if not token:
            continue
        n = full if token == "full" else int(token)
        if not 1 <= n <= full:
            raise SystemExit(f"--sizes: {n} is not between 1 and the training set's {full}")
        sizes.add(n)
    return sorted(sizes)


def sign(x: float) -> int:
    """-1, 0 or 1."""
    return (x > 0) - (x < 0)


def rel_devs(study: Study, n: int) -> list[float]:
    """``|h_n - h_full| / |h_full|`` per measured epoch."""
    return [
        abs(r.probes[n].value - r.probes[study.full].value) / abs(r.probes[study.full].value)
        for r in study.measured
    ]


def sign_agreement(study: Study, n: int, loss_rose_only: bool) -> tuple[int, int]:
    """(agreeing, total) consecutive-epoch pairs: sign of the hmax change on size ``n`` against
    the whole training set's."""
    rows = study.measured
    agree = total = 0
    for prev, cur in pairwise(rows):
        if loss_rose_only and not cur.train_loss > prev.train_loss:
            continue
        total += 1
        d_n = cur.probes[n].value - prev.probes[n].value
        d_full = cur.probes[study.full].value - prev.probes[study.full].value
        agree += sign(d_n) == sign(d_full)
    return agree, total


def replay(epochs: list[int], hmax: list[float], loss: list[float]) -> list[int]:
    """Epochs that decay under the convergence-phase rule (DESIGN.md), the first epoch being
    the switch (``h_prev, f_prev = hmax, loss``): the schedule's own state machine
    (``TwoPhaseDecision``), forced to switch at its first epoch, replays the sequence."""
    from ds_twophase.schedulers import TwoPhaseDecision

    rule = TwoPhaseDecision(
        total_epochs=len(epochs),
        patience=1,
        threshold=0.0,
        extra_epochs_ratio=0.0,
        decay_factor=0.5,
        max_exploration_epochs=1,
    )
    out = []
    for e, h, f in zip(epochs, hmax, loss, strict=True):
        if rule.end_epoch(f, lambda h=h: h).decision == "decay":
            out.append(e)
    return out


def replay_size(study: Study, n: int, switch: int) -> list[int]:
    """Decay epochs of size ``n``'s hmax sequence with the switch at epoch ``switch``."""
    rows = [r for r in study.measured if r.epoch >= switch]
    return replay(
        [r.epoch for r in rows], [r.probes[n].value for r in rows], [r.train_loss for r in rows]
    )


def replay_run_probe(study: Study) -> list[int] | None:
    """The rule replayed over the run's own recorded probe values from its switch (a check of
    ``replay``: must give the run's own decays)."""
    switch = study.switch_epoch
    if switch is None:
        return None
    rows = [r for r in study.rows if r.epoch >= switch]
    if any(r.run_hmax is None for r in rows):
        return None
    return replay(
        [r.epoch for r in rows], [float(r.run_hmax) for r in rows], [r.train_loss for r in rows]
    )


def epochs_text(epochs: list[int]) -> str:
    """``21, 25, 30`` or ``none``."""
    return ", ".join(str(e) for e in epochs) if epochs else "none"


def at_epochs(epochs: list[int]) -> str:
    """``at epochs 21, 25`` or ``at no epoch``."""
    return f"at epochs {epochs_text(epochs)}" if epochs else "at no epoch"


def above_full(study: Study, n: int) -> int:
    """Measured epochs where size ``n``'s hmax is above the whole set's."""
    return sum(r.probes[n].value > r.probes[study.full].value for r in study.measured)


def size_label(study: Study, n: int) -> str:
    """``512``, ``2048 (the run's probe batch)`` or ``16000 (whole training set)``."""
    if n == study.full:
        return f"{n} (whole training set)"
    if n == study.run_probe_size and study.nested_matches_run_probe:
        return f"{n} (the run's probe batch)"
    return str(n)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def fraction(pair: tuple[int, int]) -> str:
    """``17/20 (0.85)``."""
    agree, total = pair
    return f"{agree}/{total} ({agree / total:.2f})" if total else "0/0"


def summary_table(study: Study) -> str:
    """Per size: deviation from the whole set, sign agreement, cost."""
    med = statistics.median
    lines = [
        "| probe batch | rel. dev. from whole set: median | max | epochs above whole set "
        "| sign of h_t - h_t-1 agrees "
        "with whole set: all pairs | pairs where the loss rose | median s (wall) "
        "| median CPU s | CPU ms per sample | median HVPs | not converged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = study.measured
    for n in study.sizes:
        devs = rel_devs(study, n)
        ms = [r.probes[n] for r in rows]
        cpu = med(m.cpu for m in ms)
        lines.append(
            f"| {size_label(study, n)} | {med(devs):.1e} | {max(devs):.1e} "
            f"| {above_full(study, n)} of {len(rows)} "
            f"| {fraction(sign_agreement(study, n, False))} "
            f"| {fraction(sign_agreement(study, n, True))} | {med(m.seconds for m in ms):.2f} "
            f"| {cpu:.2f} | {1000 * cpu / n:.3f} | {med(m.iterations for m in ms):g} "
            f"| {sum(not m.converged for m in ms)} of {len(ms)} |"
        )
    return "\n".join(lines)


def run_size(study: Study) -> int | None:
    """The run's probe batch size when it is one of the measured (nested) subsets."""
    n = study.run_probe_size
    ok = n in study.sizes and study.nested_matches_run_probe and n != study.full
    return n if ok else None


def switches(study: Study) -> list[int]:
    """Switch epochs to replay from: ``--from-epoch``, and the run's own if later."""
    out = [study.from_epoch]
    if study.switch_epoch is not None and study.switch_epoch > study.from_epoch:
        out.append(study.switch_epoch)
    return out


def replay_table(study: Study) -> str:
    """Per size and switch epoch: decay epochs of the replayed rule, and whether they equal the
    whole set's and the run's probe batch's."""
    ref = run_size(study)
    head, rule = "| probe batch |", "|---|"
    for sw in switches(study):
        what = " (the run's)" if sw == study.switch_epoch else ""
        head += f" decay epochs, switch at {sw}{what} | same as whole set |"
        rule += "---|---|"
        if ref is not None:
            head += f" same as {ref} |"
            rule += "---|"
    lines = [head, rule]
    for n in study.sizes:
        line = f"| {size_label(study, n)} |"
        for sw in switches(study):
            d = replay_size(study, n, sw)
            same_full = d == replay_size(study, study.full, sw)
            line += f" {epochs_text(d)} | {'yes' if same_full else 'NO'} |"
            if ref is not None:
                line += f" {'yes' if d == replay_size(study, ref, sw) else 'NO'} |"
        lines.append(line)
    return "\n".join(lines)


def epoch_table(study: Study) -> str:
    """Every measured epoch: loss, the run's decision and hmax, and hmax per size."""
    head = "| epoch | train loss | loss rose | decision | run's hmax | " + " | ".join(
        f"hmax, {n}" for n in study.sizes
    )
    lines = [head + " |", "|---:|---:|---|---|---:|" + "---:|" * len(study.sizes)]
    prev = None
    for r in study.measured:
        rose = "" if prev is None else ("yes" if r.train_loss > prev.train_loss else "")
        run_h = "" if r.run_hmax is None else f"{r.run_hmax:.5g}"
        vals = " | ".join(f"{r.probes[n].value:.5g}" for n in study.sizes)
        lines.append(
            f"| {r.epoch} | {r.train_loss:.5f} | {rose} | {r.decision} | {run_h} | {vals} |"
        )
        prev = r
    return "\n".join(lines)


def reading(study: Study) -> list[str]:
    """Factual statements from this run's numbers."""
    med = statistics.median
    out = ["", "Reading:"]
    full = study.full
    rows = study.measured
    pairs_all = sign_agreement(study, full, False)[1]
    pairs_rose = sign_agreement(study, full, True)[1]
    out.append(
        f"- One run, one seed: {len(rows)} measured epochs ({study.from_epoch} to "
        f"{study.epochs}), {pairs_all} consecutive pairs, {pairs_rose} of them with a rising "
        "training loss. The run itself "
        + (
            f"switched after epoch {study.switch_epoch} and decayed at epochs "
            f"{epochs_text(study.decays())}"
            if study.switch_epoch is not None
            else "never switched to the convergence phase"
        )
        + f" (its own probe: {study.run_probe})."
    )
    ref = run_size(study)
    for sw in switches(study):
        d_full = replay_size(study, full, sw)
        same = [n for n in study.sizes if n != full and replay_size(study, n, sw) == d_full]
        text = (
            f"- Replay with the switch at epoch {sw}"
            + (" (the run's own)" if sw == study.switch_epoch else "")
            + f": the whole set decays {at_epochs(d_full)}; "
            + (
                f"the same epochs with {', '.join(map(str, same))} samples"
                if same
                else "no smaller probe batch gives the same epochs"
            )
        )
        if ref is not None:
            d_ref = replay_size(study, ref, sw)
            text += f". The run's {ref}-sample batch decays {at_epochs(d_ref)}; against it: "
            items = []
            for n in study.sizes:
                if n >= ref:
                    continue
                d = replay_size(study, n, sw)
                missing, extra = sorted(set(d_ref) - set(d)), sorted(set(d) - set(d_ref))
                parts = ([f"misses {epochs_text(missing)}"] if missing else []) + (
                    [f"adds {epochs_text(extra)}"] if extra else []
                )
                items.append(f"{n} " + (", ".join(parts) if parts else "decays at the same epochs"))
            text += "; ".join(items)
        out.append(text + ".")
    if ref is not None:
        smaller = [n for n in study.sizes if n < ref]
        per = {
            n: [
                sw
                for sw in switches(study)
                if replay_size(study, n, sw) == replay_size(study, ref, sw)
            ]
            for n in smaller
        }
        both = [n for n in smaller if len(per[n]) == len(switches(study))]
        some = [n for n in smaller if per[n] and n not in both]
        out.append(
            f"- Probe batches below {ref} that give the same decay epochs as the run's {ref} "
            f"from every replayed switch ({', '.join(map(str, switches(study)))}): "
            + (", ".join(map(str, both)) if both else "none")
            + (
                "; from some of them only: "
                + ", ".join(f"{n} (from {', '.join(map(str, per[n]))})" for n in some)
                if some
                else ""
            )
            + "."
        )
    changes = [
        abs(cur.probes[full].value - prev.probes[full].value) / abs(prev.probes[full].value)
        for prev, cur in pairwise(rows)
    ]
    out.append(
        f"- For scale: the whole set's hmax changes between consecutive epochs by "
        f"{statistics.median(changes):.1%} (median; smallest {min(changes):.1%}, largest "
        f"{max(changes):.0%})."
    )
    bad = {
        n: [
            cur.epoch
            for prev, cur in pairwise(rows)
            if cur.train_loss > prev.train_loss
            and sign(cur.probes[n].value - prev.probes[n].value)
            != sign(cur.probes[full].value - prev.probes[full].value)
        ]
        for n in study.sizes
        if n != full
    }
    out.append(
        "- Where the loss rose (the only pairs that can decay), the sign of the hmax change "
        "disagrees with the whole set's at epochs: "
        + "; ".join(f"{n}: {epochs_text(e)}" for n, e in bad.items())
        + "."
    )
    above = [above_full(study, n) for n in study.sizes if n != full]
    text = (
        f"- Every subset's hmax lies above the whole set's in {min(above)} to {max(above)} of "
        f"the {len(rows)} epochs"
    )
    meds = {n: med(rel_devs(study, n)) for n in study.sizes if n != full}
    inversions = [(m, n) for m in meds for n in meds if m < n and meds[n] > meds[m]]
    if inversions:
        text += (
            "; the deviation does not shrink steadily with the size: "
            + "; ".join(
                f"{n} is further off than {m} (median) although it holds those {m} samples"
                for m, n in inversions
            )
            + " (nested subsets of one permutation)"
        )
    out.append(text + ".")
    unconverged = {
        n: sum(not r.probes[n].converged for r in rows)
        for n in study.sizes
        if any(not r.probes[n].converged for r in rows)
    }
    text = (
        f"- Not converged to tol {TOL:g} within {MAX_ITERS} HVPs: "
        + ", ".join(f"{k} of {len(rows)} at {n}" for n, k in unconverged.items())
        + " (the value after the last HVP is used)"
        if unconverged
        else f"- Every measurement converged to tol {TOL:g} within {MAX_ITERS} HVPs"
    )
    if study.start_check:
        text += (
            f". Probed again from another random start vector at epochs {study.from_epoch} "
            f"and {study.epochs}, the values differ by at most "
            f"{max(study.start_check.values()):.1e} (relative)"
        )
    out.append(text + ".")
    run_rows = [r for r in rows if r.run_hmax is not None]
    n_run = study.run_probe_size
    if run_rows and n_run in study.sizes and study.nested_matches_run_probe:
        errs = [
            abs(float(r.run_hmax) - r.probes[n_run].value) / abs(r.probes[n_run].value)
            for r in run_rows
        ]
        out.append(
            f"- The run's own probe values (same weights, same {n_run} samples, its solver "
            f"settings) differ from the converged {n_run}-sample values here by {med(errs):.1e} "
            f"(median) to {max(errs):.1e} (max) over the {len(run_rows)} epochs where it ran."
        )
    train_cpu = med(r.train_cpu for r in study.rows)
    cost = ", ".join(
        f"{n}: {med(r.probes[n].cpu for r in rows) / train_cpu:.2f}" for n in study.sizes
    )
    text = (
        f"- Cost: median probe CPU seconds / median training-epoch CPU seconds "
        f"({train_cpu:.2f} s), at tol {TOL:g} (median HVPs in the table): {cost}."
    )
    own = [r for r in study.rows if r.run_probe_cpu is not None]
    if own:
        text += (
            f" The run's own probe ({study.run_probe_size} samples, its settings) took "
            f"{med(r.run_probe_iterations or 0 for r in own):g} HVPs and "
            f"{med(r.run_probe_cpu or 0.0 for r in own) / train_cpu:.2f} of a training epoch's "
            f"CPU time (medians over its {len(own)} probes)."
        )
    out.append(text)
    return out


def render(study: Study, command: str, started: datetime.datetime) -> str:
    """The markdown section."""
    full = study.full
    out = [
        HEADING,
        "",
        "How the probe batch size changes hmax and the epoch-to-epoch comparisons the two-phase "
        "rule (`h_prev < hmax and f_prev < f`) makes. One training run of the config, in-process "
        "(a gloo group of one rank, `Trainer.train_epoch` + `epoch_end` as in a normal run, the "
        "config's own probe deciding); from epoch "
        f"{study.from_epoch} on, after each epoch's decision, hmax of the same weights on nested "
        f"probe batches: the first n of one permutation of the {full:,} training indices "
        "seeded with the config's seed (the permutation the trainer's probe batch is drawn from, "
        f"so the {study.run_probe_size}-sample subset "
        + ("is" if study.nested_matches_run_probe else "is NOT")
        + " the run's probe batch), micro-batches of "
        f"{study.micro}, layer `{study.layer}` (the config's `{study.layer_setting}`), "
        f'`bn_mode="eval"`, the trainer\'s loss (mean cross-entropy), '
        f"`principal_eigenvalue(..., max_iters={MAX_ITERS}, tol={TOL:g})`.",
        "",
        f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}, 1 torch "
        f"thread. Config: `{study.config}` ({study.epochs} epochs). Code: {study.source}; "
        f'solver: "{study.solver}". Run time: {study.wall / 60:.1f} min '
        f"({len(study.measured)} epochs with probes).",
    ]
    if study.verify:
        out += ["", f"Same training as a normal run: {study.verify}."]
    out += [
        "",
        f"**hmax per probe batch size against the whole training set** (epochs "
        f"{study.from_epoch} to {study.epochs}; a pair is two consecutive epochs, "
        "t - 1 and t; CPU = this process)",
        "",
        summary_table(study),
        "",
        "**The convergence-phase rule replayed over the recorded (hmax, loss) sequence**, once per "
        "size. This is ONE trajectory, trained with the config's own probe (which decayed the LR "
        "where the run's decisions say): the replay shows whether the decision inputs agree, not "
        "what separate runs with another probe batch would do (after a different decay the "
        "trajectories would part).",
        "",
        replay_table(study),
    ]
    check = replay_run_probe(study)
    if check is not None:
        verdict = "the same as" if check == study.decays() else "NOT the same as"
        out += [
            "",
            f"Check of the replay: over the run's own recorded probe values from its switch "
            f"(epoch {study.switch_epoch}) it gives decays at {epochs_text(check)}, {verdict} "
            f"the run's decisions ({epochs_text(study.decays())}).",
        ]
    out += reading(study)
    out += [
        "",
        "<details><summary>Per epoch: training loss, the run's decision and probe value, hmax "
        "per probe batch size</summary>",
        "",
        epoch_table(study),
        "",
        "</details>",
    ]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` fills in what is not given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", default=CONFIG, help="run config (default: %(default)s)")
    parser.add_argument(
        "--from-epoch", type=int, help="first epoch with probes (default: 20; --quick: 4)"
    )
    parser.add_argument(
        "--sizes",
        help=f"comma-separated probe batch sizes, 'full' = the whole training set (default: "
        f"{SIZES}; --quick: {QUICK_SIZES}); the whole set is always measured",
    )
    parser.add_argument(
        "--epochs", type=int, help="override trainer.epochs (default: the config's; --quick: 8)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 epochs from epoch 4, sizes 128,512,full"
    )
    parser.add_argument(
        "--micro", type=int, default=MICRO, help="probe micro-batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare with a normal `python -m ds_twophase.train` run (default: yes, except "
        "with --quick)",
    )
    parser.add_argument("--json", help="save the per-epoch measurements to this file")
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: yes, except with --quick)",
    )
    args = parser.parse_args(argv)
    if args.from_epoch is None:
        args.from_epoch = 4 if args.quick else 20
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else SIZES
    if args.epochs is None and args.quick:
        args.epochs = 8
    if args.verify is None:
        args.verify = not args.quick
    if args.write_docs is None:
        args.write_docs = not args.quick
    if args.micro < 1:
        parser.error("--micro must be >= 1")
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
            print(f"wrote {args.json}", flush=True)
        if args.verify:
            study.verify = verify_against_trainer(study, args, tmp)
            print(f"verify: {study.verify}", flush=True)
    section = render(study, command, started)
    print("\n" + section)
    if args.write_docs:
        write_section(HEADING, section, after=AFTER)
        print(f"wrote {DOCS.relative_to(ROOT)} ({HEADING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
