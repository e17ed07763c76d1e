"""LARS step time against timm.optim.Lars and torch.optim.SGD (CPU).

Runs every candidate on the parameter sets of a CIFAR ResNet-20 (65 tensors, 0.27M parameters)
and a torchvision ResNet-50 (161 tensors, 25.6M), with fixed random gradients, lr 0.1,
momentum 0.9, weight decay 5e-4, at one thread and at the machine's thread count. "LARS" is our
optimizer as it runs by default (the fused C++ CPU kernel); "LARS eager fallback" is the PyTorch
implementation it falls back to without a compiler (and compile=True only applies there). Candidates
are interleaved in a new random order every round (a short block of consecutive steps each), so
that load from other processes hits them alike; the median ``step()`` time of each is reported
(warm steps, their CPU time, and the cache-cold first step of each block), with the ratios
against timm's best mode and the fastest SGD, and written to ``docs/benchmarks.md`` under
``## LARS step time``.

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

from common import add_device_flag, resolve_device, synchronize, write_section  # noqa: E402

from ds_twophase.optim import LARS, kernel_available, split_param_groups  # noqa: E402

LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
CPU = torch.device("cpu")
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

EXCLUDED = "excl. bias/norm: "


def lars_groups(params: list[nn.Parameter]) -> list[dict]:
    """Our groups for the bias/norm-excluded set-up (what lars_param_groups builds)."""
    return split_param_groups(params)


EAGER = "LARS eager fallback"
COMPILED = EAGER + ", compile=True"


def _timm_groups(params: list[nn.Parameter]) -> list[dict]:
    # timm adapts only groups with weight decay: the excluded group is plain momentum SGD
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


CANDIDATES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "SGD (default)": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD),
    "SGD foreach": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD, foreach=True),
    "SGD fused": lambda ps: torch.optim.SGD(ps, LR, MOMENTUM, weight_decay=WD, fused=True),
    "timm Lars (loop)": lambda ps: TimmLars(ps, LR, MOMENTUM, weight_decay=WD, foreach=False),
    "timm Lars (foreach)": lambda ps: TimmLars(ps, LR, MOMENTUM, weight_decay=WD, foreach=True),
    "LARS": lambda ps: LARS(ps, LR, MOMENTUM, WD),
    EAGER: lambda ps: LARS(ps, LR, MOMENTUM, WD).disable_kernel(),
    COMPILED: lambda ps: LARS(ps, LR, MOMENTUM, WD, compile=True).disable_kernel(),
    # the usual set-up: biases and norm parameters (< 2 dims) neither adapted nor decayed
    EXCLUDED + "timm Lars (loop)": lambda ps: TimmLars(
        _timm_groups(ps), LR, MOMENTUM, foreach=False
    ),
    EXCLUDED + "timm Lars (foreach)": lambda ps: TimmLars(
        _timm_groups(ps), LR, MOMENTUM, foreach=True
    ),
    EXCLUDED + "LARS": lambda ps: LARS(lars_groups(ps), LR, MOMENTUM, WD),
    EXCLUDED + EAGER: lambda ps: LARS(lars_groups(ps), LR, MOMENTUM, WD).disable_kernel(),
}
SGD = ["SGD (default)", "SGD foreach", "SGD fused"]
# goals: speed-up over timm's best mode per model, and at most this factor over the fastest SGD
GOAL_SPEEDUP = {"ResNet-20": 2.0, "ResNet-50": 1.0}
GOAL_SGD_COST = 2.0
TIMM = ["timm Lars (loop)", "timm Lars (foreach)"]
OURS = ["LARS", EAGER, COMPILED]


def measure(
    model_name: str,
    threads: int,
    rounds: int,
    block: int,
    skip: set[str],
    device: torch.device = CPU,
) -> dict[str, dict[str, float]]:
    """Median step() milliseconds of each candidate, by kind of sample.

    Every round runs the candidates in a new random order, each for ``block`` consecutive
    steps. ``"warm"``: wall clock of the steps after the first of each block (the optimizer's
    tensors are in cache, as when it runs every iteration). ``"warm cpu"``: the same steps'
    CPU time of this thread, which leaves out time spent waiting for a core, so with one thread
    it measures the step itself even while other processes load the machine. ``"cold"``: the
    first step of each block, right after the other candidates evicted the caches. On CUDA
    each step is timed between ``torch.cuda.synchronize`` calls ("warm cpu" is then the host's
    share only).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS[model_name]().to(device)
    gen = torch.Generator().manual_seed(1)
    grads = [(torch.randn(p.shape, generator=gen) * 0.01).to(device) for p in model.parameters()]
    optimizers = {}
    for name, make in CANDIDATES.items():
        if name in skip:
            continue
        params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # never modified by any candidate
        opt = make(params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed compile or build is reported below
            synchronize(device)
            start = time.perf_counter()
            opt.step()  # compile=True compiles here; the kernel is built (or loaded) here
            synchronize(device)
            first = time.perf_counter() - start
        if isinstance(opt, LARS) and name.endswith("compile=True"):
            if not opt.compiled:
                print(f"  {name}: compilation failed, not measured", flush=True)
                continue
            print(f"  {name}: first step (compilation) {first:.1f} s", flush=True)
        if isinstance(opt, LARS) and opt.uses_kernel and device.type == "cpu":
            if not kernel_available():
                print(f"  {name}: the fused kernel is unavailable, not measured", flush=True)
                continue
            print(f"  {name}: first step {first * 1e3:.1f} ms", flush=True)
        for _ in range(3):
            opt.step()
        optimizers[name] = opt
    kinds = ("warm", "warm cpu", "cold")
    samples: dict[str, dict[str, list[float]]] = {k: {n: [] for n in optimizers} for k in kinds}
    order = list(optimizers)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            for i in range(block):
                synchronize(device)
                start, start_cpu = time.perf_counter(), time.thread_time()
                optimizers[name].step()
                synchronize(device)
                cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start
                if i == 0:
                    samples["cold"][name].append(wall)
                else:
                    samples["warm"][name].append(wall)
                    samples["warm cpu"][name].append(cpu)
    names = [n for n in CANDIDATES if n not in skip]
    return {
        kind: {
            n: statistics.median(by_name[n]) * 1e3 if by_name.get(n) else math.nan for n in names
        }
        for kind, by_name in samples.items()
    }


def ratios(ms: dict[str, float]) -> dict[str, float]:
    """Speed-up of each LARS variant over timm's best mode, and its cost over the fastest SGD."""
    timm_best = min(ms[n] for n in TIMM)
    sgd_best = min(ms[n] for n in SGD)
    out = {}
    for name in OURS:
        if name in ms:
            out[f"{name}: timm best / ours"] = timm_best / ms[name]
            out[f"{name}: ours / fastest SGD"] = ms[name] / sgd_best
    for ours in (EXCLUDED + "LARS", EXCLUDED + EAGER):
        if ours in ms:
            timm_excl = min(ms[EXCLUDED + n] for n in TIMM)
            out[f"{ours}: timm best (same groups) / ours"] = timm_excl / ms[ours]
            out[f"{ours}: ours / fastest SGD"] = ms[ours] / sgd_best
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
        "Ratios (goals, for the all-adapted set: ResNet-20 timm best / ours >= 2, ResNet-50 >= 1; "
        "ours / fastest SGD <= 2):",
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


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (noisier)")
    parser.add_argument("--no-compile", action="store_true", help=f"skip {COMPILED}")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="subset to run"
    )
    add_device_flag(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rounds = {"ResNet-20": 20 if args.quick else 100, "ResNet-50": 4 if args.quick else 20}
    block = {"ResNet-20": 6, "ResNet-50": 3}
    skip = {COMPILED} if args.no_compile else set()
    thread_counts = sorted({1, os.cpu_count() or 1})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported in the output instead
        available = kernel_available()
    kernel_note = (
        f"the fused kernel was ready {time.perf_counter() - start:.2f} s after the first call "
        "(which includes its build where it is not cached; see docs/lars.md)"
        if available
        else "the fused kernel was UNAVAILABLE in this run (its rows are not measured)"
    )
    print(kernel_note, flush=True)
    results: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    for model_name in args.models:
        for threads in thread_counts:
            n, k = rounds[model_name], block[model_name]
            print(f"{model_name}, {threads} thread(s), {n} rounds of {k} steps", flush=True)
            got = measure(model_name, threads, n, k, skip, device)
            for kind, ms in got.items():
                if kind == "warm" or threads == 1:
                    results.setdefault(kind, {})[(model_name, threads)] = ms
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python bench/lars.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    text = "\n".join(
        [
            SECTION,
            "",
            f"`{command}` on {datetime.date.today().isoformat()}; {machine()}; load average "
            f"{load:.1f} at the start, {load_end:.1f} at the end (other processes share the "
            f"cores: compare ratios within this run, not absolute times across runs); "
            f"{kernel_note}.",
            "'LARS' is the default (the fused C++ CPU kernel), 'LARS eager fallback' the PyTorch "
            "implementation used without a C++ compiler (compile=True applies only there). "
            "Rows without a prefix adapt every parameter (as timm does with weight decay); rows "
            f"'{EXCLUDED}...' use the usual groups: parameters with fewer than 2 dimensions "
            "neither adapted nor decayed (lars_param_groups; timm given the same groups). "
            "Gradients are fixed random tensors. Each round runs the candidates in a random "
            f"order, each for {block['ResNet-20']} (ResNet-20) or {block['ResNet-50']} "
            "(ResNet-50) consecutive steps; the first step of each block is cache-cold. "
            "Multi-thread columns: while other processes hold a core, every parallel region "
            "waits for a descheduled worker thread, so those columns reflect the machine's "
            "load as much as the optimizers (more ops per step, more waiting).",
            "",
            table(results["warm"], "Median `step()` wall-clock time, steps after the first"),
            "",
            table(
                results["warm cpu"],
                "Same steps, CPU time of the stepping thread (one thread: leaves out time spent "
                "waiting for a core while other processes run)",
            ),
            "",
            table(
                results["cold"],
                "First step of each block, wall clock (one thread): right after the other "
                "candidates ran, the optimizer's tensors are out of cache",
            ),
            "",
        ]
    )
    print()
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_section(SECTION, text, args.out)
        print(
            f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}"
        )


if __name__ == "__main__":
    main()
