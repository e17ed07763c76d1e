"""Benchmark: training throughput of the ds_twophase trainer against a bare DeepSpeed loop.

Times ``Trainer.train_epoch`` (ds_twophase/trainer/trainer.py: no probe, no evaluation) against the loop
a DeepSpeed user writes over the same model, data and config::

    engine, _, loader, _ = deepspeed.initialize(model=model, training_data=train_set,
                                                config=ds_config)
    for x, y in loader:
        loss = F.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()

``ds_config`` is the run's DeepSpeed config with DeepSpeed's built-in ``WarmupLR`` (same peak LR
and warmup steps) in place of our ``TwoPhaseLR``. All engines live in this process (a gloo
group of one rank). Whole epochs are timed after one warmup epoch each, the loops interleaved
(ABBA order), and median steps per second compared. DeepSpeed's own loader (per-sample indexing
and collation, two worker processes, last partial micro-batch kept) does not give the same
number of samples per epoch as the trainer's (whole steps only), so steps/s means samples/s
divided by the train batch size, for every loop. A third loop, "bare loop, our loader", runs
the bare loop body over the trainer's loader (``ds_twophase.trainer.epoch.make_loader``), separating
the loop's cost from the data pipeline's. Each epoch is also measured in CPU seconds (this
process plus its reaped DataLoader workers).

    python bench/trainer_overhead.py            # 2048/256, 128/64, 128/128, 7 rounds; writes
                                                # docs/benchmarks.md ("## Trainer overhead")
    python bench/trainer_overhead.py --quick    # 2048/256, 128/64, 2 rounds; prints only

``--threads`` (default ``1``; e.g. ``1,2``) lists the torch thread counts. With 2 threads on a
2-core machine that other jobs share, every loop's OpenMP threads wait for each other whenever
a core is taken (single epochs of one loop varied from 0.7 s to 16 s), hence the default of 1.
The probe's share of a run is ``bench/probe_share.py``; the probe solvers compared are
``bench/probe_solvers.py``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
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
import torch.nn.functional as F
from common import (
    bench_parser,
    cpu_seconds,
    init_single_process,
    machine_line,
    md_table,
    publish,
    quiet_stdout,
    run_config,
    writes_docs,
)

HEADING = "## Trainer overhead"
GOAL_RATIO = 0.97
OURS = "ours (Trainer.train_epoch)"
BARE = "bare DeepSpeed loop"
BARE_OUR_LOADER = "bare loop, our loader"


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


def setting_config(config: str, setting: Setting, output_dir: str) -> Any:
    """The validated ``RunConfig`` of ``config`` with the setting's batch sizes."""
    return run_config(
        config,
        [
            f"train_batch_size={setting.train_batch}",
            f"train_micro_batch_size_per_gpu={setting.micro}",
            f"trainer.output_dir={output_dir}",
        ],
    )


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

    from ds_twophase.models import build_model
    from ds_twophase.trainer import Trainer, make_loader

    run = setting_config(config, setting, tmp)
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


def throughput_table(all_results: dict[str, dict[str, LoopResult]]) -> str:
    """Median steps/s (wall and CPU) and ratios against the bare loop."""
    rows = []
    for label, results in all_results.items():
        bare = results[BARE]
        for name, res in results.items():
            wall, wall_rounds = res.ratio_to(bare)
            cpu, _ = res.ratio_to(bare, cpu=True)
            body_cpu = (
                f"{res.ratio_to(results[BARE_OUR_LOADER], cpu=True)[0]:.3f}"
                if BARE_OUR_LOADER in results
                else "-"
            )
            rows.append(
                [
                    label, name, f"{res.median():.3f}", f"{res.median() * res.train_batch:,.0f}",
                    f"{wall:.3f}", f"{wall_rounds:.3f}", f"{res.median(cpu=True):.3f}",
                    f"{cpu:.3f}", body_cpu, f"{statistics.median(e.cpu for e in res.epochs):.2f}",
                ]
            )  # fmt: skip
    header = [
        "train / micro batch", "loop", "steps/s (wall)", "samples/s (wall)", "/ bare, wall",
        "/ bare, wall, per round", "steps per CPU s", "/ bare, CPU", "/ bare loop our loader, CPU",
        "CPU s per epoch",
    ]  # fmt: skip
    return md_table(header, rows, "llrrrrrrrr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = bench_parser(__doc__, "2048/256 and 128/64, 2 rounds")
    parser.add_argument("--rounds", type=int, help="timed epochs per loop and setting")
    parser.add_argument(
        "--threads", default="1", help="comma-separated torch thread counts (0: torch's default)"
    )
    parser.add_argument(
        "--no-our-loader-row", action="store_true", help="omit the 'bare loop, our loader' row"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Time the loops, print the markdown section, and write it to the docs."""
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    threads = [int(t) if int(t) > 0 else default_threads for t in args.threads.split(",")]
    rounds = args.rounds or (2 if args.quick else 7)
    settings = [Setting(2048, 256), Setting(128, 64)]
    if not args.quick:
        settings.append(Setting(128, 128))
    command = shlex.join(["python", "bench/trainer_overhead.py", *sys.argv[1:]])
    started = datetime.datetime.now()
    tables: dict[str, dict[str, LoopResult]] = {}
    with tempfile.TemporaryDirectory(prefix="trainer_overhead_") as tmp:
        init_single_process()
        for n in threads:
            torch.set_num_threads(n)
            for s in settings:
                label = f"{s.label}, {n} thread{'s' if n > 1 else ''}"
                print(f"{label}: 1 warmup + {rounds} epochs per loop", flush=True)
                with quiet_stdout():
                    tables[label] = time_setting(
                        args.config, s, rounds, str(Path(tmp) / "t"), not args.no_our_loader_row
                    )
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}. "
            f"Config: `{args.config}` with the batch sizes of each row, one process (a gloo "
            f"group of one rank). Whole epochs after 1 warmup epoch each, {rounds} rounds with "
            "the loops interleaved ABBA; medians; steps/s = samples/s / train batch; CPU = this "
            f"process and its DataLoader workers. Goal: ours / bare >= {GOAL_RATIO}.",
            "",
            throughput_table(tables),
        ]
    )
    publish(HEADING, section, writes_docs(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
