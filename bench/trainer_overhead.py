"""Benchmark: the ds_twophase trainer against a bare DeepSpeed loop, the probe's share, its solver.

Measures in one run:

1. Training throughput of ``Trainer.train_epoch`` (ds_twophase/trainer.py: no probe, no
   evaluation) against the loop a DeepSpeed user writes over the same model, data and config::

       engine, _, loader, _ = deepspeed.initialize(model=model, training_data=train_set,
                                                   config=ds_config)
       for x, y in loader:
           loss = F.cross_entropy(engine(x), y)
           engine.backward(loss)
           engine.step()

   ``ds_config`` is the run's DeepSpeed config with DeepSpeed's built-in ``WarmupLR`` (same peak
   LR and warmup steps) in place of our ``TwoPhaseLR``. All engines live in this process (a
   gloo group of one rank). Whole epochs are timed after one warmup epoch each, the loops
   interleaved (ABBA order), and median steps per second compared. DeepSpeed's own loader
   (per-sample indexing and collation, two worker processes, last partial micro-batch kept)
   does not give the same number of samples per epoch as the trainer's (whole steps only), so
   steps/s means samples/s divided by the train batch size, for every loop. A third loop,
   "bare loop, our loader", runs the bare loop body over the trainer's loader
   (``ds_twophase.epoch.make_loader``), separating the loop's cost from the data pipeline's.
   Each epoch is also measured in CPU seconds (this process plus its reaped DataLoader workers,
   from ``getrusage``): on a shared machine the wall clock mostly measures the scheduler.
2. The share of wall time spent in the Hessian probe over whole two-phase MNIST-1D runs of
   ``python -m ds_twophase.train`` (subprocesses; ``metrics.jsonl`` read back), one run per
   entry of ``--probe-batches`` (``config``: the config as it is; an integer N: with
   ``--set scheduler.params.probe.batch_size=N``): sum of ``probe_seconds`` / sum of
   ``epoch_seconds``, HVPs per probe (``probe_hvps``), the mean probe against the median epoch
   without a probe, the final ``val_accuracy`` and the epochs that decayed. The decay epochs
   can differ between probe batches (the convergence phase compares hmax from epoch to epoch);
   each row is one run with one seed.
3. Probe solvers on the same weights (in-process, after some training, at a few probe points):
   the shipped probe (``ds_twophase.probe.HessianProbe``: Lanczos, warm start), Lanczos from the
   seeded random start, and the paper's power iteration (10 HVPs, as the paper timed it; and
   with the ``max_iters``/``tol`` stopping rule ds_twophase used before 0.1), the latter a
   reference implementation in this file (``power_iteration``) on the library's HVP engine and
   probe samples. A floor row (setup + 1 HVP) and a 30-step Lanczos reference (error column)
   bound them; ``--probe-batch N`` sets the probe batch of this part.

    python bench/trainer_overhead.py          # 2048/256, 128/64, 128/128 (7 rounds); one
                                              # full 60-epoch run per --probe-batches entry
                                              # (default: the config's probe batch); solvers
                                              # after 20 epochs at 6 points; writes
                                              # docs/benchmarks.md
    python bench/trainer_overhead.py --quick  # 2048/256, 128/64 (2 rounds); 12-epoch runs
                                              # forced to switch after epoch 6; solvers after
                                              # 2 epochs at 2 points; prints only
    python bench/trainer_overhead.py --skip-throughput --probe-batches config,256,512
                                              # parts 2 and 3 only, three whole runs

``--threads`` (default ``1``; e.g. ``1,2``) lists the torch thread counts of part 1; parts 2
and 3 use the first (passed to the subprocess as ``OMP_NUM_THREADS``). With 2 threads on a
2-core machine that other jobs share, every loop's OpenMP threads wait for each other whenever a
core is taken, and single epochs of one loop varied from 0.7 s to 16 s: such timings measure
the other jobs, hence the default of 1. Results
go to ``docs/benchmarks.md`` under ``## Trainer overhead`` (only that section is replaced);
``--quick`` writes nothing unless ``--write-docs`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = "configs/mnist1d/two_phase.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Trainer overhead"
GOAL_RATIO = 0.97
GOAL_PROBE_SHARE = 0.02
OURS = "ours (Trainer.train_epoch)"
BARE = "bare DeepSpeed loop"
BARE_OUR_LOADER = "bare loop, our loader"


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One batch layout to time (one process: gradient accumulation = train / micro)."""

    train_batch: int
    micro: int

    @property
    def label(self) -> str:
        """E.g. ``2048 / 256 (GAS 8)``."""
        return f"{self.train_batch} / {self.micro} (GAS {self.train_batch // self.micro})"


@dataclass
class EpochTime:
    """One timed epoch of one loop."""

    seconds: float
    """Wall time."""
    cpu: float
    """CPU seconds of this process and of child processes reaped meanwhile."""
    samples: int
    """Training samples processed."""
    optimizer_steps: int
    """``engine.global_steps`` advanced during the epoch."""


@dataclass
class LoopResult:
    """The timed epochs of one loop in one setting."""

    name: str
    train_batch: int
    epochs: list[EpochTime] = field(default_factory=list)

    def rates(self, cpu: bool = False) -> list[float]:
        """Per epoch: steps per second (samples / train batch) of wall or CPU time."""
        return [e.samples / (e.cpu if cpu else e.seconds) / self.train_batch for e in self.epochs]

    def median(self, cpu: bool = False) -> float:
        """Median steps per wall (or CPU) second over the timed epochs."""
        return statistics.median(self.rates(cpu))

    def ratio_to(self, other: LoopResult, cpu: bool = False) -> tuple[float, float]:
        """(ratio of medians, median of per-round ratios) of steps/s against ``other``."""
        per_round = [a / b for a, b in zip(self.rates(cpu), other.rates(cpu), strict=True)]
        return self.median(cpu) / other.median(cpu), statistics.median(per_round)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------------------------
# process group and configs
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_single_process() -> None:
    """Start a one-rank process group as ``ds_twophase.train`` does (once)."""
    from ds_twophase import dist

    dist.init_process_group(quiet=True)  # also releases DeepSpeed's /dev/shm buffer name


def run_config(
    config: str, setting: Setting, output_dir: str, extra: list[str] | None = None
) -> Any:
    """The validated ``RunConfig`` of ``config`` with the setting's batch sizes and the
    ``--set``-style overrides ``extra``."""
    from ds_twophase.config import load_config, validate_config

    raw = load_config(
        str(ROOT / config),
        [
            f"train_batch_size={setting.train_batch}",
            f"train_micro_batch_size_per_gpu={setting.micro}",
            f"trainer.output_dir={output_dir}",
            "trainer.progress=off",
            *(extra or []),
        ],
    )
    return validate_config(raw, world_size=1)


def bare_ds_config(run: Any, steps_per_epoch: int) -> dict[str, Any]:
    """The run's DeepSpeed config with DeepSpeed's built-in WarmupLR instead of our scheduler
    (same peak LR, linear warmup over the same number of optimizer steps)."""
    cfg = copy.deepcopy(run.deepspeed)
    params = run.resolved.get("scheduler", {}).get("params", {})
    peak = float(run.resolved["optimizer"]["params"]["lr"])
    warmup_steps = max(1, round(float(params.get("warmup_epochs", 10)) * steps_per_epoch))
    cfg["scheduler"] = {
        "type": "WarmupLR",
        "params": {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": peak,
            "warmup_num_steps": warmup_steps,
            "warmup_type": "linear",
        },
    }
    return cfg


# --------------------------------------------------------------------------------------------
# part 1: the loops
# --------------------------------------------------------------------------------------------
def bare_epoch(engine: Any, loader: Any, epoch: int) -> EpochTime:
    """One pass of the bare DeepSpeed loop over ``loader``, timed as a whole."""
    sampler = getattr(loader, "data_sampler", None) or getattr(loader, "sampler", None)
    sampler = getattr(sampler, "sampler", sampler)  # a BatchSampler wraps the real one
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    steps0 = engine.global_steps
    samples = 0
    engine.train()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        samples += len(y)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return EpochTime(seconds, cpu, samples, engine.global_steps - steps0)


def ours_epoch(trainer: Any, epoch: int) -> EpochTime:
    """One ``Trainer.train_epoch`` (the trainer's own code path), timed as a whole."""
    steps0 = trainer.engine.global_steps
    c0, t0 = cpu_seconds(), time.perf_counter()
    trainer.train_epoch(epoch)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    samples = trainer.steps_per_epoch * trainer.train_batch
    return EpochTime(seconds, cpu, samples, trainer.engine.global_steps - steps0)


def build_loops(
    config: str, setting: Setting, tmp: str, our_loader_row: bool
) -> dict[str, Callable[[int], EpochTime]]:
    """Epoch functions of every loop for one setting, keyed by row name. Each loop has its own
    engine and its own copy of the model, initialised from the same seed."""
    import deepspeed
    from torch.utils.data import DistributedSampler

    from ds_twophase.epoch import make_loader
    from ds_twophase.models import build_model
    from ds_twophase.trainer import Trainer

    run = run_config(config, setting, tmp)
    trainer = Trainer(run)  # seeds torch with trainer.seed before building its model
    splits = trainer.splits
    cfg = bare_ds_config(run, trainer.steps_per_epoch)
    loops: dict[str, Callable[[int], EpochTime]] = {OURS: lambda e: ours_epoch(trainer, e)}

    torch.manual_seed(run.trainer.seed)
    model = build_model(run.trainer.model, splits.num_classes, splits.input_shape)
    engine, _, ds_loader, _ = deepspeed.initialize(
        model=model, training_data=splits.train, config=cfg
    )
    loops[BARE] = lambda e: bare_epoch(engine, ds_loader, e)

    if our_loader_row:
        torch.manual_seed(run.trainer.seed)
        model2 = build_model(run.trainer.model, splits.num_classes, splits.input_shape)
        engine2, *_ = deepspeed.initialize(model=model2, config=copy.deepcopy(cfg))
        sampler = DistributedSampler(
            splits.train, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True
        )
        loader2 = make_loader(splits.train, sampler, setting.micro, 0)
        loops[BARE_OUR_LOADER] = lambda e: bare_epoch(engine2, loader2, e)
    return loops


def time_setting(
    config: str, setting: Setting, rounds: int, tmp: str, our_loader_row: bool
) -> dict[str, LoopResult]:
    """One warmup epoch per loop, then ``rounds`` rounds of one epoch per loop (ABBA order)."""
    loops = build_loops(config, setting, tmp, our_loader_row)
    results = {name: LoopResult(name, setting.train_batch) for name in loops}
    for fn in loops.values():  # epoch 1: allocator, worker start-up, caches
        fn(1)
    names = list(loops)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].epochs.append(loops[name](r + 2))
    return results


# --------------------------------------------------------------------------------------------
# part 2: the probe's share of a whole run
# --------------------------------------------------------------------------------------------
PROBE_BATCH_KEY = "scheduler.params.probe.batch_size"


@dataclass
class ProbeShare:
    """Probe and epoch times of one two-phase run, from its ``metrics.jsonl``."""

    entry: str
    """The ``--probe-batches`` entry: ``"config"`` or the probe batch size as given."""
    probe_batch: int
    """The probe batch size the run used (resolved from its config)."""
    command: str
    epochs: int
    probes: int
    hvps: list[int]
    """Hessian-vector products of each probe (``probe_hvps``)."""
    probe_seconds: float
    epoch_seconds: float
    probe_mean: float
    epoch_median_no_probe: float
    wall: float
    switch_epoch: int | None
    val_accuracy: float | None
    """``val_accuracy`` of the last epoch."""
    decay_epochs: list[int]
    """Epochs whose decision was ``decay``."""

    @property
    def label(self) -> str:
        """The probe batch, e.g. ``2048 (config)``."""
        return f"{self.probe_batch} (config)" if self.entry == "config" else str(self.probe_batch)

    @property
    def share(self) -> float:
        """sum(probe_seconds) / sum(epoch_seconds)."""
        return self.probe_seconds / self.epoch_seconds

    @property
    def per_probe(self) -> float:
        """Mean probe time / median time of the epochs without a probe."""
        return self.probe_mean / self.epoch_median_no_probe


def entry_overrides(entry: str) -> list[str]:
    """``--set`` items of one ``--probe-batches`` entry (none for ``config``)."""
    return [] if entry == "config" else [f"{PROBE_BATCH_KEY}={int(entry)}"]


def resolved_probe_batch(config: str, overrides: list[str]) -> int:
    """The probe batch size of ``config`` with ``overrides``: ``scheduler.params.probe.
    batch_size`` if set, else the global train batch size (what the trainer fills in)."""
    from ds_twophase.config import load_config, resolve_batch, validate_config

    run = validate_config(load_config(str(ROOT / config), overrides), world_size=1)
    if run.probe is not None and run.probe.batch_size:
        return int(run.probe.batch_size)
    return resolve_batch(run.deepspeed, 1).train


def probe_share(config: str, out: str, extra: list[str], entry: str, threads: int) -> ProbeShare:
    """Run the trainer as a subprocess with the probe batch of ``entry`` and read back its
    ``metrics.jsonl``."""
    overrides = [*extra, *entry_overrides(entry)]
    cmd = [sys.executable, "-m", "ds_twophase.train", "--config", config]
    for item in [f"trainer.output_dir={out}", *overrides]:
        cmd += ["--set", item]
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the trainer describes its own one-rank job
    prefix = []
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        prefix = [f"OMP_NUM_THREADS={threads}"]
    shown = " ".join([*prefix, shlex.join(["python", *cmd[1:]])])
    print(f"$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the training run failed with status {proc.returncode}")
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    probed = [(r.get("probe_seconds") or 0.0) > 0 for r in rows]
    plain = [r["epoch_seconds"] for r, p in zip(rows, probed, strict=True) if not p]
    probe_total = sum(r.get("probe_seconds") or 0.0 for r in rows)
    return ProbeShare(
        entry=entry,
        probe_batch=resolved_probe_batch(config, overrides),
        command=shown,
        epochs=len(rows),
        probes=sum(probed),
        hvps=[int(r["probe_hvps"]) for r in rows if r.get("probe_hvps")],
        probe_seconds=probe_total,
        epoch_seconds=sum(r["epoch_seconds"] for r in rows),
        probe_mean=probe_total / max(1, sum(probed)),
        epoch_median_no_probe=statistics.median(plain) if plain else math.nan,
        wall=wall,
        switch_epoch=next((r["epoch"] for r in rows if r.get("decision") == "switch"), None),
        val_accuracy=rows[-1].get("val_accuracy") if rows else None,
        decay_epochs=[r["epoch"] for r in rows if r.get("decision") == "decay"],
    )


# --------------------------------------------------------------------------------------------
# part 3: probe solvers on the same weights
# --------------------------------------------------------------------------------------------
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

    extra = [] if probe_batch is None else [f"{PROBE_BATCH_KEY}={probe_batch}"]
    run = run_config(config, Setting(2048, 256), tmp, extra)
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


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def throughput_table(all_results: dict[str, dict[str, LoopResult]]) -> str:
    """Markdown table: median steps/s (wall and CPU) and ratios against the bare loop."""
    lines = [
        "| train / micro batch | loop | steps/s (wall) | samples/s (wall) | / bare, wall "
        "| / bare, wall, per round | steps per CPU s | / bare, CPU | CPU s per epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, results in all_results.items():
        bare = results[BARE]
        for name, res in results.items():
            wall, wall_rounds = res.ratio_to(bare)
            cpu, _ = res.ratio_to(bare, cpu=True)
            cpu_epoch = statistics.median(e.cpu for e in res.epochs)
            lines.append(
                f"| {label} | {name} | {res.median():.3f} | {res.median() * res.train_batch:,.0f} "
                f"| {wall:.3f} | {wall_rounds:.3f} | {res.median(cpu=True):.3f} | {cpu:.3f} "
                f"| {cpu_epoch:.2f} |"
            )
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    """``median (min-max)``, or ``-`` for no values."""
    if not values:
        return "-"
    return f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"


def probe_table(shares: list[ProbeShare]) -> str:
    """Markdown table of the probe's share of each run, one row per probe batch."""
    lines = [
        "| probe batch | epochs | switch after epoch | probes | HVPs per probe, median (min-max) "
        "| probe s (sum) | epoch s (sum) | probe share | mean probe s "
        "| median epoch s without probe | mean probe / epoch without probe | final val_accuracy "
        "| decay epochs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in shares:
        acc = "-" if p.val_accuracy is None else f"{p.val_accuracy:.4f}"
        lines.append(
            f"| {p.label} | {p.epochs} | {p.switch_epoch or '-'} | {p.probes} | {spread(p.hvps)} "
            f"| {p.probe_seconds:.1f} | {p.epoch_seconds:.1f} | {100 * p.share:.1f}% "
            f"| {p.probe_mean:.2f} | {p.epoch_median_no_probe:.2f} | {p.per_probe:.2f} | {acc} "
            f"| {', '.join(map(str, p.decay_epochs)) or '-'} |"
        )
    return "\n".join(lines)


def relative_errors(d: SolverRows, label: str) -> list[float]:
    """Per probe point: |value - reference| / |reference|."""
    pairs = zip(d.rows[label]["value"], d.rows[REFERENCE]["value"], strict=True)
    return [abs(a - b) / abs(b) for a, b in pairs]


def solver_table(d: SolverRows) -> str:
    """Markdown table of the solver comparison (medians over the probe points)."""
    med = statistics.median
    epoch, epoch_cpu = med(d.epoch_seconds), med(d.epoch_cpu)
    lines = [
        "| probe | s (wall) | CPU s | HVPs (min-max) | probe / train epoch (wall) "
        "| probe / train epoch (CPU) | rel. error vs reference (median, max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in d.rows.items():
        errors = relative_errors(d, label)
        error = "-" if label == REFERENCE else f"{med(errors):.1e}, {max(errors):.1e}"
        lines.append(
            f"| {label} | {med(row['seconds']):.3f} | {med(row['cpu']):.3f} "
            f"| {spread(row['iters'])} "
            f"| {med(row['seconds']) / epoch:.3f} | {med(row['cpu']) / epoch_cpu:.3f} "
            f"| {error} |"
        )
    return "\n".join(lines)


def reading(
    tables: dict[str, dict[str, LoopResult]], shares: list[ProbeShare], solvers: SolverRows | None
) -> list[str]:
    """The conclusions, with this run's numbers."""
    out = ["", "Reading:"]
    for label, res in tables.items():
        wall, _ = res[OURS].ratio_to(res[BARE])
        cpu, _ = res[OURS].ratio_to(res[BARE], cpu=True)
        verdict = "met" if wall >= GOAL_RATIO else "NOT met"
        line = (
            f"- {label}: ours / bare {wall:.3f} in wall-clock steps/s (goal >= {GOAL_RATIO}: "
            f"{verdict}), {cpu:.3f} per CPU second"
        )
        if BARE_OUR_LOADER in res:
            body_wall, _ = res[OURS].ratio_to(res[BARE_OUR_LOADER])
            body_cpu, _ = res[OURS].ratio_to(res[BARE_OUR_LOADER], cpu=True)
            line += (
                f"; against the bare loop body over our loader {body_wall:.3f} (wall) and "
                f"{body_cpu:.3f} (CPU)"
            )
        out.append(line + ".")
    if tables and all(label.endswith(", 1 thread") for label in tables):
        out.append(
            "- One torch thread: with two, on this 2-core machine shared with other jobs, every "
            "loop's OpenMP threads wait for each other whenever another job holds a core; in a "
            "check of 2048 / 256 with 2 threads (2026-11-28) single epochs of one loop ranged "
            "from 0.7 s to 16 s wall, so such ratios measure the other jobs (`--threads 1,2` "
            "repeats them)."
        )
    body = [
        res[OURS].ratio_to(res[BARE_OUR_LOADER], cpu=True)[0]
        for res in tables.values()
        if BARE_OUR_LOADER in res
    ]
    if tables:
        out.append(
            "- Where ours is ahead, the data pipeline makes the difference: DeepSpeed's loader "
            "(`deepspeed_io`) indexes the TensorDataset one sample at a time, collates in two "
            "worker processes started anew every epoch, while "
            "`epoch.make_loader` gathers a whole micro-batch with one index per tensor in the "
            "training process."
            + (
                f" Per CPU second ours runs {min(body):.3f} to {max(body):.3f} times as many "
                "steps as the bare loop body over the same loader (the wall-clock ratios scatter "
                "more)"
                + (
                    ": the trainer's own per-micro-batch work (`to_engine`, the fp32 loss, the "
                    "float64 loss sum, the step counter) costs nothing measurable."
                    if min(body) >= GOAL_RATIO
                    else "."
                )
                if body
                else ""
            )
            + " A progress bar (`trainer.progress`, off here) costs about 0.2 us per `update`."
        )
    out += share_reading(shares)
    if solvers is not None:
        out += solver_reading(solvers)
    return out


def share_reading(shares: list[ProbeShare]) -> list[str]:
    """Part 2's bullets: one per run, then whether the runs decided alike."""
    out = []
    for p in shares:
        verdict = "met" if p.share < GOAL_PROBE_SHARE else "NOT met"
        out.append(
            f"- Probe share, probe batch {p.label}: {100 * p.share:.1f}% of the run (goal under "
            f"{100 * GOAL_PROBE_SHARE:.0f}%: {verdict}). The schedule switched after epoch "
            f"{p.switch_epoch or '-'} and probed {p.probes} of {p.epochs} epochs, "
            f"{spread(p.hvps)} HVPs per probe (median, min-max); one probe costs "
            f"{p.per_probe:.2f} of an epoch without one (that epoch includes evaluation)."
        )
    if len(shares) > 1:
        decays = {tuple(p.decay_epochs) for p in shares}
        listed = "; ".join(
            f"probe batch {p.label}: {', '.join(map(str, p.decay_epochs)) or 'none'}"
            for p in shares
        )
        if len(decays) > 1:
            accuracies = ", ".join(
                f"{p.val_accuracy:.4f}" if p.val_accuracy is not None else "-" for p in shares
            )
            out.append(
                f"- The decay epochs differ between the rows ({listed}): the hmax sequence the "
                "convergence phase compares depends on the probe batch, so the runs take "
                f"different schedules (final val_accuracy {accuracies}). One run each, one seed."
            )
        else:
            out.append(
                f"- Every row decayed after the same epochs ({listed}). One run each, one seed."
            )
    return out


def solver_reading(d: SolverRows) -> list[str]:
    """Part 3's bullets: measured HVPs, CPU times, errors and the floor's cost."""
    med = statistics.median
    rows = d.rows
    epoch_cpu = med(d.epoch_cpu)
    shipped, floor, ref = rows[SHIPPED], rows[FLOOR], rows[REFERENCE]
    power_rows = [label for label in rows if label.startswith(("paper:", "power iteration"))]

    def cpu(label: str) -> float:
        return med(rows[label]["cpu"])

    def hvps(label: str) -> float:
        return med(rows[label]["iters"])

    hvp = (med(ref["cpu"]) - med(floor["cpu"])) / (med(ref["iters"]) - med(floor["iters"]))
    setup = med(floor["cpu"]) - hvp * med(floor["iters"])
    against = "; ".join(
        f"against `{label}` ({hvps(label):g} HVPs, {cpu(label):.3f} CPU s) "
        f"{hvps(SHIPPED) / hvps(label):.2f}x the HVPs and {cpu(SHIPPED) / cpu(label):.2f}x the "
        "CPU time"
        for label in power_rows
    )
    out = [
        f"- Shipped probe (Lanczos, warm start): {med(shipped['iters']):g} HVPs (median; "
        f"{min(shipped['iters']):g}-{max(shipped['iters']):g}) and {cpu(SHIPPED):.3f} CPU s, "
        f"{cpu(SHIPPED) / epoch_cpu:.3f} of a training epoch's CPU time; {against}."
    ]
    errors = "; ".join(
        f"`{label}` {med(relative_errors(d, label)):.1e} (max {max(relative_errors(d, label)):.1e})"
        for label in [SHIPPED, LANCZOS_COLD, *power_rows]
    )
    out.append(f"- Relative error against the 30-step reference, median over the points: {errors}.")
    out.append(
        f"- Floor (setup + 1 HVP): {cpu(FLOOR):.3f} CPU s, {cpu(FLOOR) / epoch_cpu:.3f} of a "
        f"training epoch (CPU; {med(floor['seconds']) / med(d.epoch_seconds):.3f} wall). From the "
        f"floor and reference rows: one HVP through `{d.layer}` (the probed layer, "
        f"{d.layer_params:,} parameters) and the network's part after it, over the probe batch "
        f"of {d.probe_batch} samples, costs {hvp / epoch_cpu:.3f} of a training epoch; the setup "
        f"(forward over the probe batch keeping the graph, first gradient) "
        f"{setup / epoch_cpu:.3f}. An epoch of this data is {d.epoch_batches:.1f} global batches."
    )
    return out


def machine_line() -> str:
    """Where and how this ran."""
    import deepspeed

    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()}-core {platform.machine()} CPU shared with other jobs (load average "
        f"{load:.1f} at the end), torch {torch.__version__.split('+')[0]}, deepspeed "
        f"{deepspeed.__version__}, Python {platform.python_version()}"
    )


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence DeepSpeed's prints while engines are built and run."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds, 12-epoch runs, solvers after 2 epochs at 2 points; prints only",
    )
    parser.add_argument("--rounds", type=int, help="timed epochs per loop and setting")
    parser.add_argument("--config", default=CONFIG, help="run config (default: %(default)s)")
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated torch thread counts of part 1 (0: torch's default); parts 2 and "
        "3 use the first (default: %(default)s; --quick: the first only)",
    )
    parser.add_argument(
        "--run-epochs", type=int, help="epochs of each part 2 run (default: the config's)"
    )
    parser.add_argument(
        "--probe-batches",
        default="config",
        help="part 2: comma-separated probe batch sizes, one whole run each; 'config' = the "
        "config as it is, an integer N = --set scheduler.params.probe.batch_size=N "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--probe-batch",
        type=int,
        help="part 3: probe batch size (scheduler.params.probe.batch_size; default: the config's)",
    )
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 1")
    parser.add_argument("--skip-run", action="store_true", help="skip part 2 (the whole runs)")
    parser.add_argument(
        "--skip-demo", action="store_true", help="skip part 3 (the probe solvers compared)"
    )
    parser.add_argument(
        "--no-our-loader-row", action="store_true", help="omit the 'bare loop, our loader' row"
    )
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: yes, except with --quick)",
    )
    args = parser.parse_args(argv)
    entries = [e.strip() for e in args.probe_batches.split(",")]
    for entry in entries:
        if entry != "config" and not (entry.isdigit() and int(entry) > 0):
            parser.error(f"--probe-batches: expected 'config' or an integer >= 1, got {entry!r}")
    args.probe_batches = entries
    if args.probe_batch is not None and args.probe_batch < 1:
        parser.error(f"--probe-batch must be >= 1, got {args.probe_batch}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print the markdown section, and write it to the docs."""
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    threads = [int(t) if int(t) > 0 else default_threads for t in args.threads.split(",")]
    if args.quick:
        threads = threads[:1]
    rounds = args.rounds or (2 if args.quick else 7)
    settings = [Setting(2048, 256), Setting(128, 64)]
    if not args.quick:
        settings.append(Setting(128, 128))
    first, points = (2, 2) if args.quick else (20, 6)
    command = shlex.join(["python", "bench/trainer_overhead.py", *sys.argv[1:]])
    started = datetime.datetime.now()

    tables: dict[str, dict[str, LoopResult]] = {}
    shares: list[ProbeShare] = []
    solvers: SolverRows | None = None
    with tempfile.TemporaryDirectory(prefix="trainer_overhead_") as tmp:
        if not args.skip_throughput:
            init_single_process()
            for n in threads:
                torch.set_num_threads(n)
                for s in settings:
                    label = f"{s.label}, {n} thread{'s' if n > 1 else ''}"
                    print(f"part 1, {label}: 1 warmup + {rounds} epochs per loop", flush=True)
                    with quiet_stdout():
                        tables[label] = time_setting(
                            args.config, s, rounds, str(Path(tmp) / "t"), not args.no_our_loader_row
                        )
        torch.set_num_threads(threads[0])
        if not args.skip_run:
            extra: list[str] = []
            if args.quick:
                extra = ["trainer.epochs=12", "scheduler.params.max_exploration_epochs=6"]
            if args.run_epochs:
                extra = [f"trainer.epochs={args.run_epochs}"]
            for n, entry in enumerate(args.probe_batches):
                print(f"part 2, a whole two-phase run, probe batch: {entry}", flush=True)
                out_dir = str(Path(tmp) / f"run{n}")
                shares.append(probe_share(args.config, out_dir, extra, entry, threads[0]))
        if not args.skip_demo:
            init_single_process()
            print(f"part 3, probe solvers: {first} epochs, then {points} probe points", flush=True)
            with quiet_stdout():
                solvers = probe_solvers(
                    args.config, str(Path(tmp) / "solvers"), first, points, args.probe_batch
                )

    out = [
        HEADING,
        "",
        f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}. "
        f"Config: `{args.config}` (SGD, TwoPhaseLR, MNIST-1D with 16,000 training samples, "
        "`mnist1d_cnn`), one process (a gloo group of one rank). Torch threads: as listed "
        f"per row in part 1, {threads[0]} in parts 2 and 3.",
    ]
    if tables:
        out += [
            "",
            "**Training throughput: our trainer against a bare DeepSpeed loop** (whole epochs "
            f"after 1 warmup epoch each, {rounds} rounds with the loops interleaved ABBA; "
            "medians; steps/s = samples/s / train batch; CPU = this process and its DataLoader "
            "workers, which with 2 threads also counts OpenMP threads waiting for each other; "
            f"goal: ours / bare >= {GOAL_RATIO})",
            "",
            throughput_table(tables),
        ]
    if shares:
        out += [
            "",
            "**Probe share of a whole two-phase run** (from `metrics.jsonl`, one run per probe "
            "batch, one seed; epoch s includes evaluation and the probe; HVPs from `probe_hvps`; "
            f"goal: probe under {100 * GOAL_PROBE_SHARE:.0f}% of the total)",
            "",
            "Runs:",
            "",
            *[f"- probe batch {p.label}: `{p.command}` ({p.wall:.0f} s wall)" for p in shares],
            "",
            probe_table(shares),
        ]
    if solvers is not None:
        d = solvers
        out += [
            "",
            "**Probe solvers on the same weights** (in-process, 2048 / 256, the config's probe "
            f"settings: probe batch {d.probe_batch}"
            f"{' (`--probe-batch`)' if args.probe_batch else ''} in micro-batches of "
            f"{d.micro_batch}, "
            f"`max_iters` {d.max_iters}, `tol` {d.tol:g}; after {d.trained_first} training epochs, "
            f"at each of {len(d.epoch_seconds)} probe points (one more before them, where the "
            "warm start has no previous vector, is not counted): one training epoch, then every "
            "solver on the same weights in rotating order. The Lanczos rows are "
            "`ds_twophase.probe.HessianProbe` instances (the shipped code path), each keeping its "
            "own warm-start vector across the points; the power-iteration rows are this "
            "bench's reference implementation of the paper's method (`power_iteration`: "
            "`v <- Hv / ||Hv||`, Rayleigh quotient as the estimate) on the library's HVP "
            "engine, the same probe samples, micro-batches, layer and seeded random start. "
            f"The paper timed {PAPER_HVPS} power iterations. The floor row is the least any "
            "solver pays (the forward over the probe batch with the graph kept, and one HVP); "
            "the reference (30 Lanczos steps) gives the error column. Medians)",
            "",
            solver_table(d),
        ]
    out += reading(tables, shares, solvers)
    section = "\n".join(out) + "\n"
    print("\n" + section)
    for label, res in tables.items():
        ratio = res[OURS].median() / res[BARE].median()
        cpu = res[OURS].median(cpu=True) / res[BARE].median(cpu=True)
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        print(
            f"goal ours/bare >= {GOAL_RATIO}, {label}: wall {ratio:.3f} ({verdict}), CPU {cpu:.3f}"
        )
    for p in shares:
        verdict = "met" if p.share < GOAL_PROBE_SHARE else "NOT met"
        print(
            f"goal probe share < {GOAL_PROBE_SHARE:.0%}, probe batch {p.label}: {p.share:.2%} "
            f"({verdict})"
        )
    if args.write_docs if args.write_docs is not None else not args.quick:
        write_section(HEADING, section)
        print(f"wrote {DOCS.relative_to(ROOT)} ({HEADING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
