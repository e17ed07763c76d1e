"""Benchmark: overhead of the ds_twophase trainer against a bare DeepSpeed loop, and probe share.

Measures in one run:

1. Training throughput of ``Trainer.train_epoch`` (ds_twophase/loop.py: no probe, no
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
   (``ds_twophase.loop.make_loader``), separating the loop's cost from the data pipeline's.
   Each epoch is also measured in CPU seconds (this process plus its reaped DataLoader workers,
   from ``getrusage``): on a shared machine the wall clock mostly measures the scheduler.
2. The share of wall time spent in the Hessian probe over a whole two-phase MNIST-1D run of
   ``python -m ds_twophase.train`` (a subprocess; ``metrics.jsonl`` read back): sum of
   ``probe_seconds`` / sum of ``epoch_seconds``, and the mean probe against the median epoch
   without a probe.
3. A clearly labelled SCRATCH demonstration of suggested fixes for the probe's cost (the
   published numbers of parts 1 and 2 are always of the unmodified code): monkeypatched copies
   of ``ds_twophase.hessian._power_iteration`` that start each probe from the vector the
   previous probe ended on and/or use Lanczos instead of power iteration, side by side with the
   shipped probe on the same weights, with a 30-step Lanczos reference for the error.

    python bench/trainer_overhead.py          # 2048/256, 128/64, 128/128 (7 rounds); the
                                              # config's full 60-epoch run; writes
                                              # docs/benchmarks.md
    python bench/trainer_overhead.py --quick  # 2048/256, 128/64 (2 rounds); a 12-epoch run
                                              # forced to switch after epoch 6; prints only

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
import logging
import math
import os
import platform
import re
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
    """Start a one-rank gloo process group as ``ds_twophase.train`` does (once)."""
    import deepspeed
    import torch.distributed as tdist
    from deepspeed.utils import logger as ds_logger

    if tdist.is_available() and tdist.is_initialized():
        return
    ds_logger.setLevel(logging.WARNING)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)


def run_config(config: str, setting: Setting, output_dir: str) -> Any:
    """The validated ``RunConfig`` of ``config`` with the setting's batch sizes."""
    from ds_twophase.config import load_config, validate_config

    raw = load_config(
        str(ROOT / config),
        [
            f"train_batch_size={setting.train_batch}",
            f"train_micro_batch_size_per_gpu={setting.micro}",
            f"trainer.output_dir={output_dir}",
            "trainer.progress=off",
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

    from ds_twophase.loop import Trainer, make_loader
    from ds_twophase.models import build_model

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
@dataclass
class ProbeShare:
    """Probe and epoch times of one two-phase run, from its ``metrics.jsonl``."""

    command: str
    epochs: int
    probes: int
    probe_seconds: float
    epoch_seconds: float
    probe_mean: float
    epoch_median_no_probe: float
    wall: float
    switch_epoch: int | None

    @property
    def share(self) -> float:
        """sum(probe_seconds) / sum(epoch_seconds)."""
        return self.probe_seconds / self.epoch_seconds

    @property
    def per_probe(self) -> float:
        """Mean probe time / median time of the epochs without a probe."""
        return self.probe_mean / self.epoch_median_no_probe


def probe_share(config: str, out: str, extra: list[str], threads: int) -> ProbeShare:
    """Run the trainer as a subprocess and read back its ``metrics.jsonl``."""
    cmd = [sys.executable, "-m", "ds_twophase.train", "--config", config]
    for item in [f"trainer.output_dir={out}", *extra]:
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
        command=shown,
        epochs=len(rows),
        probes=sum(probed),
        probe_seconds=probe_total,
        epoch_seconds=sum(r["epoch_seconds"] for r in rows),
        probe_mean=probe_total / max(1, sum(probed)),
        epoch_median_no_probe=statistics.median(plain) if plain else math.nan,
        wall=wall,
        switch_epoch=next((r["epoch"] for r in rows if r.get("decision") == "switch"), None),
    )


# --------------------------------------------------------------------------------------------
# part 3: SCRATCH demonstration (not the shipped code) of cheaper probes
# --------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One probe variant of the demonstration."""

    label: str
    algorithm: str
    """``"power"`` (the shipped iteration) or ``"lanczos"``."""
    warm: bool
    """Start from the vector the previous probe of this variant ended on."""
    shipped: bool = False
    """The unmodified ds_twophase probe (no monkeypatching)."""
    max_iters: int | None = None
    tol: float | None = None
    vector: torch.Tensor | None = None


def _lanczos_step_values(
    hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, max_iters: int, tol: float
) -> tuple[float, int, bool, torch.Tensor]:
    """Lanczos with full reorthogonalisation; stops when the Ritz value of largest magnitude
    changes by less than ``tol`` (relative). Returns (value, HVPs, converged, Ritz vector)."""
    basis = [v / v.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    value, prev, ritz = math.nan, None, basis[0]
    for k in range(1, max_iters + 1):
        w = hvp(basis[-1])
        if not bool(torch.isfinite(w).all()):
            return math.nan, k, False, basis[0]
        alphas.append(float(torch.dot(w, basis[-1])))
        for q in basis:  # full reorthogonalisation (twice is enough)
            w = w - torch.dot(w, q) * q
        for q in basis:
            w = w - torch.dot(w, q) * q
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        for i, b in enumerate(betas):
            t[i, i + 1] = t[i + 1, i] = b
        evals, evecs = torch.linalg.eigh(t)
        top = int(evals.abs().argmax())
        value = float(evals[top])
        coeffs = evecs[:, top].to(v.dtype)
        ritz = sum(c * q for c, q in zip(coeffs, basis, strict=True))
        beta = float(w.norm())
        if (prev is not None and abs(value - prev) < tol * abs(value)) or beta < 1e-12:
            return value, k, True, ritz
        prev = value
        betas.append(beta)
        basis.append(w / beta)
    return value, max_iters, False, ritz


def _scratch_power_iteration(variant: Variant) -> Callable[..., Any]:
    """SCRATCH replacement for ``ds_twophase.hessian._power_iteration`` (same signature): the
    shipped code's functional view and HVP engine, with a start vector from the previous probe
    (``variant.warm``) and power iteration or Lanczos (``variant.algorithm``)."""
    from ds_twophase import hessian as H

    def power_iteration(
        model: Any,
        loss_fn: Any,
        batches: list[tuple[Any, Any]],
        names: list[str],
        max_iters: int,
        tol: float,
        method: str,
        seed: int,
        reducer: Any,
        max_graph_bytes: int | None,
        iteration_hook: Callable[[int], None] | None,
        buffers: dict[str, torch.Tensor] | None,
    ) -> Any:
        max_iters = variant.max_iters or max_iters
        tol = tol if variant.tol is None else variant.tol
        fn = H._Functional(model, loss_fn, names, buffers)
        local_count = float(sum(H._batch_size(x, y) for x, y in batches))
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(fn.num_params, generator=gen, dtype=torch.float64).to(fn.device, fn.dtype)
        if variant.warm and variant.vector is not None and variant.vector.shape == v.shape:
            v = variant.vector.clone()
        v /= v.norm()
        with torch.enable_grad():
            engine = H._ExactHVP(fn, batches, v, max_graph_bytes)

            def hvp(x: torch.Tensor) -> torch.Tensor:
                hv, count = reducer(engine(x), local_count)
                return hv / count

            if variant.algorithm == "lanczos":
                value, k, converged, v = _lanczos_step_values(hvp, v, max_iters, tol)
            else:  # the shipped power iteration
                value, prev, converged, k = math.nan, None, False, 0
                while k < max_iters:
                    k += 1
                    hv = hvp(v)
                    value, norm = float(torch.dot(v, hv)), float(hv.norm())
                    if not (math.isfinite(value) and math.isfinite(norm)) or norm == 0.0:
                        break
                    v = hv / norm
                    if prev is not None and abs(value - prev) < tol * abs(value):
                        converged = True
                        break
                    prev = value
        if math.isfinite(value):
            variant.vector = v.detach().clone()
        reducer.done()
        return H.EigenResult(
            value=value,
            iterations=k,
            layer=names,
            num_params=fn.num_params,
            num_samples=int(local_count),
            converged=converged,
            seconds=0.0,
        )

    return power_iteration


@contextlib.contextmanager
def scratch_solver(variant: Variant) -> Iterator[None]:
    """SCRATCH: monkeypatch the variant's solver in for the duration of one probe."""
    from ds_twophase import hessian as H

    original = H._power_iteration
    H._power_iteration = _scratch_power_iteration(variant)
    try:
        yield
    finally:
        H._power_iteration = original


def demo_variants() -> list[Variant]:
    """The shipped probe, three SCRATCH solvers, and a tight reference (not timed against)."""
    return [
        Variant("shipped: power iteration, random start at every probe", "power", False, True),
        Variant("SCRATCH: power iteration, warm start", "power", True),
        Variant("SCRATCH: Lanczos, random start", "lanczos", False),
        Variant("SCRATCH: Lanczos, warm start", "lanczos", True),
        Variant("floor: setup + 1 HVP (no convergence check)", "lanczos", False, max_iters=1),
        Variant("reference: Lanczos, 30 steps, tol 0", "lanczos", False, max_iters=30, tol=0.0),
    ]


@dataclass
class ProbeDemo:
    """Per probe point and variant: wall seconds, CPU seconds, HVPs, value."""

    trained_first: int
    epoch_batches: float
    """Global batches in one epoch of training data."""
    layer: str = ""
    layer_params: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_cpu: list[float] = field(default_factory=list)
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def probe_demo(config: str, tmp: str, train_first: int, points: int) -> ProbeDemo:
    """Train ``train_first`` epochs at 2048 / 256, then ``points`` times: one more epoch and
    every variant's probe on the same weights (order rotating). Warm variants' first call has
    no previous vector, so the first point is not counted."""
    from ds_twophase.loop import Trainer

    run = run_config(config, Setting(2048, 256), tmp)
    trainer = Trainer(run)
    if trainer.probe is None:
        raise SystemExit(f"{config}: no Hessian probe configured (TwoPhaseLR needed)")
    if run.probe.method != "exact":
        raise SystemExit("the demonstration needs probe.method 'exact'")
    module, device = trainer.engine.module, trainer.engine.device
    variants = demo_variants()
    demo = ProbeDemo(train_first, len(trainer.splits.train) / trainer.train_batch)
    for v in variants:
        demo.rows[v.label] = {"seconds": [], "cpu": [], "iters": [], "value": []}
    modules = dict(module.named_modules())
    for epoch in range(1, train_first + 1):
        trainer.train_epoch(epoch)
    for i in range(points + 1):
        c0, t0 = cpu_seconds(), time.perf_counter()
        trainer.train_epoch(train_first + 1 + i)
        epoch_seconds, epoch_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        measured = {}
        for v in order:
            c0 = cpu_seconds()
            with contextlib.nullcontext() if v.shipped else scratch_solver(v):
                outcome = trainer.probe(module, device)
            if not outcome.ok:
                raise SystemExit(f"{v.label}: the probe failed: {outcome.error}")
            demo.layer = ", ".join(outcome.layer or [])
            measured[v.label] = (
                outcome.seconds,
                cpu_seconds() - c0,
                outcome.iterations,
                outcome.value,
            )
        if i == 0:
            names = demo.layer.split(", ")
            demo.layer_params = sum(p.numel() for n in names for p in modules[n].parameters())
            continue
        demo.epoch_seconds.append(epoch_seconds)
        demo.epoch_cpu.append(epoch_cpu)
        for label, (sec, cpu, iters, value) in measured.items():
            row = demo.rows[label]
            row["seconds"].append(sec)
            row["cpu"].append(cpu)
            row["iters"].append(iters)
            row["value"].append(value)
    return demo


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


def probe_table(p: ProbeShare) -> str:
    """Markdown table of the probe's share of a run."""
    return "\n".join(
        [
            "| epochs | switch after epoch | probes | probe s (sum) | epoch s (sum) | probe share "
            "| mean probe s | median epoch s without probe | mean probe / epoch |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {p.epochs} | {p.switch_epoch or '-'} | {p.probes} | {p.probe_seconds:.1f} "
            f"| {p.epoch_seconds:.1f} | {100 * p.share:.1f}% | {p.probe_mean:.2f} "
            f"| {p.epoch_median_no_probe:.2f} | {p.per_probe:.2f} |",
        ]
    )


def demo_table(d: ProbeDemo, share: ProbeShare | None) -> str:
    """Markdown table of the demonstration (medians over the probe points). With the part 2
    run, each variant's projected probe share of that run: its probes scaled by the variant's
    CPU time relative to the shipped probe's, the rest of the run unchanged."""
    med = statistics.median
    epoch, epoch_cpu = med(d.epoch_seconds), med(d.epoch_cpu)
    labels = list(d.rows)
    reference = d.rows[labels[-1]]["value"]
    shipped_cpu = med(d.rows[labels[0]]["cpu"])
    lines = [
        "| probe | s (wall) | CPU s | HVPs (min-max) | probe / train epoch (wall) "
        "| probe / train epoch (CPU) | rel. error vs reference (median, max) "
        "| projected share of the run above |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        row = d.rows[label]
        errors = [abs(a - b) / abs(b) for a, b in zip(row["value"], reference, strict=True)]
        projected = "-"
        if share is not None and share.probes and label != labels[-1]:
            probes = share.probe_seconds * med(row["cpu"]) / shipped_cpu
            rest = share.epoch_seconds - share.probe_seconds
            projected = f"{100 * probes / (rest + probes):.1f}%"
        lines.append(
            f"| {label} | {med(row['seconds']):.3f} | {med(row['cpu']):.3f} "
            f"| {med(row['iters']):g} ({min(row['iters']):g}-{max(row['iters']):g}) "
            f"| {med(row['seconds']) / epoch:.3f} | {med(row['cpu']) / epoch_cpu:.3f} "
            f"| {med(errors):.1e}, {max(errors):.1e} | {projected} |"
        )
    return "\n".join(lines)


def reading(
    tables: dict[str, dict[str, LoopResult]], share: ProbeShare | None, demo: ProbeDemo | None
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
            "`loop.make_loader` gathers a whole micro-batch with one index per tensor in the "
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
    if share is not None:
        verdict = "met" if share.share < GOAL_PROBE_SHARE else "NOT met"
        out.append(
            f"- Probe share: {100 * share.share:.1f}% of the run (goal under "
            f"{100 * GOAL_PROBE_SHARE:.0f}%: {verdict}). The schedule switched after epoch "
            f"{share.switch_epoch}, and from then on every epoch probes ({share.probes} of "
            f"{share.epochs}); one probe costs {share.per_probe:.2f} of an epoch without one "
            "(that epoch includes evaluation)."
        )
    if demo is not None:
        med = statistics.median
        labels = list(demo.rows)
        rows = demo.rows
        floor, ref = rows[labels[-2]], rows[labels[-1]]
        hvp = (med(ref["cpu"]) - med(floor["cpu"])) / (med(ref["iters"]) - med(floor["iters"]))
        setup = med(floor["cpu"]) - hvp * med(floor["iters"])
        epoch_cpu = med(demo.epoch_cpu)
        shipped, best = rows[labels[0]], rows[labels[3]]

        def err(row: dict[str, list[float]]) -> float:
            pairs = zip(row["value"], ref["value"], strict=True)
            return med(abs(a - b) / abs(b) for a, b in pairs)

        out.append(
            f"- Why the probe costs that much (CPU times of the demonstration): the shipped power "
            f"iteration needs {med(shipped['iters']):g} HVPs (median, at most `max_iters`) from a "
            f"fresh random vector at every probe, and it converges slowly here (error "
            f"{err(shipped):.0e} when it stops on `tol`). One HVP through `{demo.layer}` (the "
            f"probed layer, {demo.layer_params:,} parameters) and the network's part after it, "
            f"over the probe batch, costs {hvp / epoch_cpu:.3f} of a training epoch; the setup "
            f"(forward over the probe batch keeping the graph, first gradient) "
            f"{setup / epoch_cpu:.3f}. An epoch of this data is only {demo.epoch_batches:.1f} "
            "global batches, and the probe batch is one global batch."
        )
        out.append(
            "- Fix, in `ds_twophase/hessian.py` `_power_iteration`: replace the power iteration "
            "by Lanczos with full reorthogonalisation over the flat layer vector (the block has "
            f"{demo.layer_params:,} parameters here: {med(shipped['iters']):g} basis vectors "
            f"take {demo.layer_params * 4 * med(shipped['iters']) / 2**20:.1f} MiB) and return "
            "the Ritz value "
            "of largest magnitude, stopping on the same relative-change rule. Add a `v0` argument "
            "to `principal_eigenvalue` (start vector, default the seeded random one), keep the "
            "final Ritz vector in `HessianProbe` (`ds_twophase/hook.py`: `self.last_vector`, "
            "passed through `measure_hmax` and `_ProbeJob.probe` in `ds_twophase/probe.py`, and "
            "saved as a tensor file next to the checkpoint's JSON state so a resumed run starts "
            "from the same vector; without it a resumed run only starts cold once); in sharded "
            "mode every "
            "rank holds the same all-reduced vectors, so the warm start is rank-consistent. On "
            f"the same weights the warm-started Lanczos needs {med(best['iters']):g} HVPs "
            f"instead of {med(shipped['iters']):g}, costs "
            f"{med(best['cpu']) / med(shipped['cpu']):.2f}x the shipped probe's CPU time, and is "
            f"off the reference by {err(best):.0e} instead of {err(shipped):.0e}."
        )
        out.append(
            "- Even so the probe stays far above 2% on this config: the floor row (forward with "
            "graph plus a single HVP, which no solver can go below) already projects to the "
            "share in its last column. With the probe batch equal to the global batch (the "
            "design's default) and an epoch of under 8 batches, the 2% goal needs a smaller "
            "probe batch (`probe.batch_size`; cost scales with it) or a cheaper layer "
            "(`probe.layer`, e.g. `fc`), both changes to what is measured, so a decision for the "
            "method's owner rather than an implementation fix."
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


def write_docs(section: str) -> None:
    """Replace (or append) the ``## Trainer overhead`` section of docs/benchmarks.md, leaving
    every other section as it is."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = section.rstrip() + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    DOCS.write_text(text)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence DeepSpeed's prints while engines are built and run."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a short run")
    parser.add_argument("--rounds", type=int, help="timed epochs per loop and setting")
    parser.add_argument("--config", default=CONFIG, help="run config (default: %(default)s)")
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated torch thread counts of part 1 (0: torch's default); parts 2 and "
        "3 use the first (default: %(default)s; --quick: the first only)",
    )
    parser.add_argument(
        "--run-epochs", type=int, help="epochs of the two-phase run (default: the config's)"
    )
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 1")
    parser.add_argument("--skip-run", action="store_true", help="skip part 2 (the whole run)")
    parser.add_argument("--skip-demo", action="store_true", help="skip part 3 (SCRATCH demo)")
    parser.add_argument(
        "--no-our-loader-row", action="store_true", help="omit the 'bare loop, our loader' row"
    )
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: yes, except with --quick)",
    )
    return parser.parse_args(argv)


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
    share: ProbeShare | None = None
    demo: ProbeDemo | None = None
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
            print("part 2, a whole two-phase run", flush=True)
            share = probe_share(args.config, str(Path(tmp) / "run"), extra, threads[0])
        if not args.skip_demo:
            init_single_process()
            print(f"part 3 (SCRATCH demo): {first} epochs, then {points} probe points", flush=True)
            with quiet_stdout():
                demo = probe_demo(args.config, str(Path(tmp) / "demo"), first, points)

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
    if share is not None:
        out += [
            "",
            "**Probe share of a whole two-phase run** (from `metrics.jsonl`; epoch s includes "
            f"evaluation and the probe; goal: probe under {100 * GOAL_PROBE_SHARE:.0f}% of the "
            "total)",
            "",
            f"Run: `{share.command}` ({share.wall:.0f} s wall).",
            "",
            probe_table(share),
        ]
    if demo is not None:
        out += [
            "",
            "**SCRATCH demonstration, not the shipped code: cheaper eigen-solvers for the probe** "
            f"(in-process, 2048 / 256, the config's probe settings; after {demo.trained_first} "
            f"training epochs, at each of {len(demo.epoch_seconds)} probe points: one training "
            "epoch, then every variant on the same weights in rotating order. SCRATCH rows "
            "monkeypatch `ds_twophase.hessian._power_iteration` with a copy that keeps the "
            "shipped HVP engine and changes only the start vector (warm: the vector the previous "
            "probe ended on) and the iteration (power or Lanczos with full reorthogonalisation, "
            "same stopping rule: relative change below `tol`). The floor row is the least any "
            "solver pays (the forward over the probe batch with the graph kept, and one HVP); the "
            "reference (30 Lanczos steps) gives the error column. Medians)",
            "",
            demo_table(demo, share),
        ]
    out += reading(tables, share, demo)
    section = "\n".join(out) + "\n"
    print("\n" + section)
    for label, res in tables.items():
        ratio = res[OURS].median() / res[BARE].median()
        cpu = res[OURS].median(cpu=True) / res[BARE].median(cpu=True)
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        print(
            f"goal ours/bare >= {GOAL_RATIO}, {label}: wall {ratio:.3f} ({verdict}), CPU {cpu:.3f}"
        )
    if share is not None:
        verdict = "met" if share.share < GOAL_PROBE_SHARE else "NOT met"
        print(f"goal probe share < {GOAL_PROBE_SHARE:.0%}: {share.share:.2%} ({verdict})")
    if args.write_docs if args.write_docs is not None else not args.quick:
        write_docs(section)
        print(f"wrote {DOCS.relative_to(ROOT)} ({HEADING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
