"""Benchmark: the Hessian probe's share of the wall time of whole two-phase MNIST-1D runs.

Runs ``python -m ds_twophase.train`` (a subprocess, one process) once per entry of
``--probe-batches`` (``config``: the config as it is; an integer N: with ``--set
scheduler.params.probe.batch_size=N``) and reads back its ``metrics.jsonl``: sum of
``probe_seconds`` / sum of ``epoch_seconds`` (epoch time includes evaluation and the probe),
HVPs per probe (``probe_hvps``), the mean probe against the median epoch without a probe, the
final ``val_accuracy`` and the epochs that decayed. The decay epochs can differ between probe
batches (the convergence phase compares hmax from epoch to epoch); each row is one run with one
seed. Goal: the probe under 2% of the run.

    python bench/probe_share.py                            # one full run of the config
    python bench/probe_share.py --probe-batches config,256,2048
    python bench/probe_share.py --quick                    # 12 epochs, switch forced after
                                                           # epoch 6; prints only
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import (
    bench_parser,
    machine_line,
    md_table,
    publish,
    run_config,
    spread,
    train_and_read,
    writes_docs,
)

HEADING = "## Probe share"
AFTER = "## Trainer overhead"
GOAL_PROBE_SHARE = 0.02
PROBE_BATCH_KEY = "scheduler.params.probe.batch_size"


@dataclass
class ProbeShare:
    """Probe and epoch times of one two-phase run, from its ``metrics.jsonl``."""

    label: str
    """The probe batch, e.g. ``128 (config)``."""
    command: str
    epochs: int
    probes: int
    hvps: list[int]
    """Hessian-vector products of each probe (``probe_hvps``)."""
    probe_seconds: float
    epoch_seconds: float
    epoch_median_no_probe: float
    wall: float
    switch_epoch: int | None
    val_accuracy: float | None
    """``val_accuracy`` of the last epoch."""
    decay_epochs: list[int]

    @property
    def share(self) -> float:
        """sum(probe_seconds) / sum(epoch_seconds)."""
        return self.probe_seconds / self.epoch_seconds

    @property
    def probe_mean(self) -> float:
        """Mean seconds of one probe."""
        return self.probe_seconds / max(1, self.probes)


def entry_overrides(entry: str) -> list[str]:
    """``--set`` items of one ``--probe-batches`` entry (none for ``config``)."""
    return [] if entry == "config" else [f"{PROBE_BATCH_KEY}={int(entry)}"]


def resolved_probe_batch(config: str, overrides: list[str]) -> int:
    """The probe batch size the trainer uses: ``probe.batch_size`` if set, else the global
    train batch size."""
    from ds_twophase.config import resolve_batch

    run = run_config(config, overrides)
    if run.probe is not None and run.probe.batch_size:
        return int(run.probe.batch_size)
    return resolve_batch(run.deepspeed, 1).train


def probe_share(config: str, out: str, extra: list[str], entry: str, threads: int) -> ProbeShare:
    """One training run with the probe batch of ``entry``, read back."""
    overrides = [*extra, *entry_overrides(entry), "trainer.progress=off"]
    rows, shown, wall = train_and_read(config, overrides, out, threads)
    batch = resolved_probe_batch(config, overrides)
    return share_from_rows(
        f"{batch} (config)" if entry == "config" else str(batch), shown, rows, wall
    )


def share_from_rows(label: str, command: str, rows: list[dict], wall: float) -> ProbeShare:
    """A ``ProbeShare`` from the ``metrics.jsonl`` rows of one run."""
    probed = [(r.get("probe_seconds") or 0.0) > 0 for r in rows]
    plain = [r["epoch_seconds"] for r, p in zip(rows, probed, strict=True) if not p]
    return ProbeShare(
        label=label,
        command=command,
        epochs=len(rows),
        probes=sum(probed),
        hvps=[int(r["probe_hvps"]) for r in rows if r.get("probe_hvps")],
        probe_seconds=sum(r.get("probe_seconds") or 0.0 for r in rows),
        epoch_seconds=sum(r["epoch_seconds"] for r in rows),
        epoch_median_no_probe=statistics.median(plain) if plain else math.nan,
        wall=wall,
        switch_epoch=next((r["epoch"] for r in rows if r.get("decision") == "switch"), None),
        val_accuracy=rows[-1].get("val_accuracy") if rows else None,
        decay_epochs=[r["epoch"] for r in rows if r.get("decision") == "decay"],
    )


def probe_table(shares: list[ProbeShare]) -> str:
    """One row per run."""
    rows = [
        [
            p.label, p.epochs, p.switch_epoch or "-", p.probes, spread(p.hvps),
            f"{p.probe_seconds:.1f}", f"{p.epoch_seconds:.1f}", f"{100 * p.share:.1f}%",
            f"{p.probe_mean:.2f}", f"{p.epoch_median_no_probe:.2f}",
            f"{p.probe_mean / p.epoch_median_no_probe:.2f}",
            "-" if p.val_accuracy is None else f"{p.val_accuracy:.4f}",
            ", ".join(map(str, p.decay_epochs)) or "-",
        ]
        for p in shares
    ]  # fmt: skip
    header = [
        "probe batch", "epochs", "switch after epoch", "probes",
        "HVPs per probe, median (min-max)", "probe s (sum)", "epoch s (sum)", "probe share",
        "mean probe s", "median epoch s without probe", "mean probe / epoch without probe",
        "final val_accuracy", "decay epochs",
    ]  # fmt: skip
    return md_table(header, rows, "rrrrrrrrrrrrl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = bench_parser(__doc__, "12-epoch runs forced to switch after epoch 6")
    parser.add_argument(
        "--probe-batches",
        default="config",
        help="comma-separated probe batch sizes, one whole run each; 'config' = the config as "
        "it is (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, help="epochs of each run (default: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs")
    args = parser.parse_args(argv)
    args.probe_batches = [e.strip() for e in args.probe_batches.split(",")]
    for entry in args.probe_batches:
        if entry != "config" and not (entry.isdigit() and int(entry) > 0):
            parser.error(f"--probe-batches: expected 'config' or an integer >= 1, got {entry!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print the markdown section, and write it to the docs."""
    args = parse_args(argv)
    extra: list[str] = []
    if args.quick:
        extra = ["trainer.epochs=12", "scheduler.params.max_exploration_epochs=6"]
    if args.epochs:
        extra = [e for e in extra if not e.startswith("trainer.epochs=")]
        extra.append(f"trainer.epochs={args.epochs}")
    command = shlex.join(["python", "bench/probe_share.py", *sys.argv[1:]])
    started = datetime.datetime.now()
    with tempfile.TemporaryDirectory(prefix="probe_share_") as tmp:
        shares = [
            probe_share(args.config, str(Path(tmp) / f"run{n}"), extra, entry, args.threads)
            for n, entry in enumerate(args.probe_batches)
        ]
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `{command}`. Date: {started:%Y-%m-%d}. Machine: {machine_line()}. "
            f"Config: `{args.config}`, one process. From `metrics.jsonl`, one run per probe "
            "batch, one seed; epoch s includes evaluation and the probe; HVPs from `probe_hvps`. "
            f"Goal: probe under {100 * GOAL_PROBE_SHARE:.0f}% of the run.",
            "",
            *[f"- probe batch {p.label}: `{p.command}` ({p.wall:.0f} s wall)" for p in shares],
            "",
            probe_table(shares),
        ]
    )
    publish(HEADING, section, writes_docs(args), AFTER)
    for p in shares:
        verdict = "met" if p.share < GOAL_PROBE_SHARE else "NOT met"
        print(f"goal probe share < {GOAL_PROBE_SHARE:.0%}, {p.label}: {p.share:.2%} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
