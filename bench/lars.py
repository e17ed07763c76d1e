"""LARS step time against timm.optim.Lars and torch.optim.SGD (CPU).

Runs every candidate on the parameter sets of a CIFAR ResNet-20 (65 tensors, 0.27M parameters)
and a torchvision ResNet-50 (161 tensors, 25.6M), with fixed random gradients, lr 0.1,
momentum 0.9, weight decay 5e-4, at one thread and at the machine's thread count. Candidates
are interleaved in a new random order every round so that load from other processes hits them
alike; the median ``step()`` time of each is reported, with the ratios against timm's best mode
and the fastest SGD, and written to ``docs/benchmarks.md`` under ``## LARS step time``.

    python bench/lars.py            # full run (several minutes, most of it ResNet-50)
    python bench/lars.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from timm.optim import Lars as TimmLars
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ds_twophase.optim import LARS  # noqa: E402

LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
SECTION = "## LARS step time"


def resnet20() -> nn.Module:
    """CIFAR ResNet-20 with projection shortcuts (65 tensors), the project's or a local copy."""
    try:
        from ds_twophase.models.cifar_resnet import resnet20 as project_resnet20

        return project_resnet20(shortcut="B")
    except ImportError:
        return _LocalResNet20()


class _LocalResNet20(nn.Module):
    """Stand-in with the same parameter shapes, for checkouts without ds_twophase.models."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                s = stride if i == 0 else 1
                layers += [nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout)]
                layers += [nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)]
                if s != 1 or cin != cout:
                    layers += [nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout)]
                cin = cout
        layers.append(nn.Linear(64, 10))
        self.layers = nn.ModuleList(layers)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-20": resnet20,
    "ResNet-50": lambda: torchvision.models.resnet50(weights=None),
}

CANDIDATES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "SGD (default)": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD),
    "SGD foreach": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD, foreach=True),
    "SGD fused": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD, fused=True),
    "timm Lars (loop)": lambda ps: TimmLars(ps, LR, MOMENTUM, weight_decay=WD, foreach=False),
    "timm Lars (foreach)": lambda ps: TimmLars(ps, LR, MOMENTUM, weight_decay=WD, foreach=True),
    "LARS": lambda ps: LARS(ps, LR, MOMENTUM, WD),
    "LARS compile=True": lambda ps: LARS(ps, LR, MOMENTUM, WD, compile=True),
}
SGD = ["SGD (default)", "SGD foreach", "SGD fused"]
# goals: speed-up over timm's best mode per model, and at most this factor over the fastest SGD
GOAL_SPEEDUP = {"ResNet-20": 2.0, "ResNet-50": 1.0}
GOAL_SGD_COST = 2.0
TIMM = ["timm Lars (loop)", "timm Lars (foreach)"]
OURS = ["LARS", "LARS compile=True"]


def measure(
    model_name: str, threads: int, rounds: int, skip: set[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median step() milliseconds of each candidate: wall clock, and this thread's CPU time.

    The CPU time leaves out the time the thread waited for a core, so with one thread it
    measures the step itself even when other processes load the machine.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS[model_name]()
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) * 0.01 for p in model.parameters()]
    optimizers = {}
    for name, make in CANDIDATES.items():
        if name in skip:
            continue
        params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # never modified by any candidate
        opt = make(params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed compile is reported below instead
            start = time.perf_counter()
            opt.step()  # compile=True compiles here
            first = time.perf_counter() - start
        if isinstance(opt, LARS) and name.endswith("compile=True"):
            if not opt._compile:
                print(f"  {name}: compilation failed, not measured", flush=True)
                continue
            print(f"  {name}: first step (compilation) {first:.1f} s", flush=True)
        for _ in range(3):
            opt.step()
        optimizers[name] = opt
    wall: dict[str, list[float]] = {name: [] for name in optimizers}
    cpu: dict[str, list[float]] = {name: [] for name in optimizers}
    order = list(optimizers)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start, start_cpu = time.perf_counter(), time.thread_time()
            optimizers[name].step()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)

    def medians(samples: dict[str, list[float]]) -> dict[str, float]:
        names = [n for n in CANDIDATES if n not in skip]
        return {n: statistics.median(samples[n]) * 1e3 if n in samples else math.nan for n in names}

    return medians(wall), medians(cpu)


def ratios(ms: dict[str, float]) -> dict[str, float]:
    """Speed-up of each LARS variant over timm's best mode, and its cost over the fastest SGD."""
    timm_best = min(ms[n] for n in TIMM)
    sgd_best = min(ms[n] for n in SGD)
    out = {}
    for name in OURS:
        if name in ms:
            out[f"{name}: timm best / ours"] = timm_best / ms[name]
            out[f"{name}: ours / fastest SGD"] = ms[name] / sgd_best
    return out


def table(results: dict[tuple[str, int], dict[str, float]], title: str) -> str:
    """Markdown tables: times, then ratios with the goals."""
    cols = list(results)
    head = "| | " + " | ".join(f"{m}, {t} thread{'s' * (t > 1)}" for m, t in cols) + " |"
    rule = "|---" * (len(cols) + 1) + "|"
    lines = [f"{title}, ms:", "", head, rule]
    for name in next(iter(results.values())):
        lines.append(f"| {name} | " + " | ".join(f"{results[c][name]:.3f}" for c in cols) + " |")
    lines += [
        "",
        "Ratios (goals: ResNet-20 timm best / ours >= 2, ResNet-50 >= 1; ours / fastest SGD <= 2):",
        "",
        head,
        rule,
    ]
    rats = {c: ratios(results[c]) for c in cols}
    for key in next(iter(rats.values())):
        lines.append(
            f"| {key} | " + " | ".join(f"{rats[c].get(key, float('nan')):.2f}" for c in cols) + " |"
        )
    for name in OURS:
        cells = [goals_met(name, model, rats[(model, t)]) for model, t in cols]
        lines.append(f"| {name}: goals met | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_met(name: str, model: str, rats: dict[str, float]) -> str:
    """'yes' or 'no' for one variant and column (nan ratios, e.g. not measured, give 'n/a')."""
    speedup = rats.get(f"{name}: timm best / ours", math.nan)
    cost = rats.get(f"{name}: ours / fastest SGD", math.nan)
    if math.isnan(speedup) or math.isnan(cost):
        return "n/a"
    return "yes" if speedup >= GOAL_SPEEDUP[model] and cost <= GOAL_SGD_COST else "no"


def machine() -> str:
    """CPU model, cores and library versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, timm {__import__('timm').__version__}"
    )


def write_section(text: str, path: Path) -> None:
    """Replace (or append) this benchmark's section of ``path``, leaving the others alone."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        new = "\n".join(lines[:start] + text.rstrip("\n").splitlines() + [""] + lines[end:])
        new = new.rstrip("\n") + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (noisier)")
    parser.add_argument("--no-compile", action="store_true", help="skip LARS compile=True")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    rounds = {"ResNet-20": 40 if args.quick else 300, "ResNet-50": 6 if args.quick else 40}
    skip = {"LARS compile=True"} if args.no_compile else set()
    thread_counts = sorted({1, os.cpu_count() or 1})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    wall, cpu = {}, {}
    for model_name in MODELS:
        for threads in thread_counts:
            print(f"{model_name}, {threads} thread(s), {rounds[model_name]} rounds", flush=True)
            got = measure(model_name, threads, rounds[model_name], skip)
            wall[(model_name, threads)] = got[0]
            if threads == 1:
                cpu[(model_name, threads)] = got[1]
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python bench/lars.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    text = "\n".join(
        [
            SECTION,
            "",
            f"`{command}` on {datetime.date.today().isoformat()}; {machine()}; load average "
            f"{load:.1f} at the start, {load_end:.1f} at the end (other processes share the "
            "cores: compare ratios within this run, not absolute times across runs).",
            "Every parameter is adapted (as timm does with weight decay), grads fixed random.",
            "",
            table(wall, "Median `step()` wall-clock time"),
            "",
            table(
                cpu,
                "Median `step()` CPU time of the stepping thread (one thread only: "
                "insensitive to waiting for a core while other processes run)",
            ),
            "",
        ]
    )
    print()
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_section(text, args.out)
        print(
            f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}"
        )


if __name__ == "__main__":
    main()
