"""LARS under ZeRO-1 against torch SGD under ZeRO-1 and stage-0 LARS, 2 CPU ranks, DeepSpeed.

On the parameter sets of a CIFAR ResNet-20 (0.27M parameters) and a torchvision ResNet-50
(25.6M), each configuration is a real DeepSpeed engine built from JSON through
``ds_twophase.initialize`` (LARS with biases and norms excluded, lr 0.1, momentum 0.9, weight
decay 5e-4, which under ZeRO is one parameter group with the exclusion marked per parameter;
torch SGD the same without the trust ratio, in one group as DeepSpeed builds it from JSON and,
to show what a second group costs DeepSpeed, with biases and norms in a group of their own,
the split LARS uses at stage 0). The "model" multiplies each parameter by a fixed random tensor
and sums, so backward is cheap and the gradients are fixed. Timed:
``engine.step()`` (under ZeRO-1: gradient norm, flattening, the optimizer on the partition, the
all-gather of the updated weights; at stage 0 the optimizer alone, the gradients having been
all-reduced in backward), and ``backward + step``. Configurations are interleaved, a block of
steps each, so load from other processes hits them alike; medians of rank 0 are reported, with
ratios against ZeRO-1 SGD, and written to ``docs/benchmarks.md`` under ``## LARS under ZeRO``.
A ResNet-20 step takes about 10 ms, within the noise of gloo's collectives on a shared CPU, so
it gets five times the rounds of ResNet-50.

    python bench/lars_zero.py            # both models
    python bench/lars_zero.py --quick    # fewer rounds, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import publish, writes_docs  # noqa: E402

SECTION = "## LARS under ZeRO"
# label: (optimizer type, ZeRO stage, biases and norms in a second group)
CONFIGS = {
    "ZeRO-1 LARS": ("LARS", 1, False),
    "ZeRO-1 SGD": ("SGD", 1, False),
    # biases and norms in a group of their own (LARS's split at stage 0): what a second group
    # costs DeepSpeed (flattening, gradient norm, all-gather), the reason LARS takes one
    "ZeRO-1 SGD, two groups": ("SGD", 1, True),
    "stage-0 LARS": ("LARS", 0, False),
}
PARAMS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


class ParamSet(nn.Module):
    """The parameters of ``model`` (same names and shapes); loss = sum(p * fixed random)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.names = [n.replace(".", "_") for n, _ in model.named_parameters()]
        for name, p in zip(self.names, model.parameters(), strict=True):
            self.register_parameter(name, nn.Parameter(p.detach().clone()))
            self.register_buffer(name + "_c", torch.randn(p.shape, generator=g) * 1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum() * 0
        for name in self.names:
            total = total + (getattr(self, name) * getattr(self, name + "_c")).sum()
        return total


def make_model(name: str) -> nn.Module:
    if name == "ResNet-20":
        from ds_twophase.models.cifar_resnet import resnet20

        return resnet20(shortcut="B")
    import torchvision

    return torchvision.models.resnet50(weights=None)


def worker(models: list[str], rounds: dict[str, int], block: int, out: Path) -> None:
    import deepspeed

    import ds_twophase
    from ds_twophase import dist
    from ds_twophase.optim import split_param_groups

    deepspeed.init_distributed()
    world = dist.get_world_size()
    results = {}
    for model_name in models:
        engines = {}
        for label, (opt, stage, split) in CONFIGS.items():
            cfg = {
                "train_batch_size": world,
                "train_micro_batch_size_per_gpu": 1,
                "steps_per_print": 10**9,
                "optimizer": {"type": opt, "params": dict(PARAMS)},
                "zero_optimization": {"stage": stage},
            }
            if opt == "SGD" and stage:
                cfg["zero_allow_untested_optimizer"] = True
            torch.manual_seed(0)
            model = ParamSet(make_model(model_name))
            groups = None
            if split:
                groups = split_param_groups(model.parameters(), model)
                for group in groups:
                    group.pop("adapt")
            engines[label], *_ = ds_twophase.initialize(
                model=model, model_parameters=groups, config=cfg
            )
        times = {label: {"step": [], "total": []} for label in engines}
        x = torch.ones(1)
        for r in range(rounds[model_name] + 1):
            # a common random order per round, the same on every rank (collectives inside)
            order = list(engines)
            g = torch.Generator().manual_seed(r)
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
            for label in order:
                engine = engines[label]
                for _ in range(block):
                    dist.barrier()
                    t0 = time.perf_counter()
                    engine.backward(engine(x))
                    t1 = time.perf_counter()
                    engine.step()
                    t2 = time.perf_counter()
                    if r:  # round 0 warms up (kernel load, first-step allocations)
                        times[label]["step"].append(t2 - t1)
                        times[label]["total"].append(t2 - t0)
        results[model_name] = {
            label: {k: statistics.median(v) * 1e3 for k, v in t.items()}
            for label, t in times.items()
        }
        results[model_name]["_numel"] = sum(p.numel() for p in make_model(model_name).parameters())
        del engines
    if dist.get_rank() == 0:
        out.write_text(json.dumps(results))


def table(results: dict) -> str:
    lines = [
        "| model | configuration | `engine.step()` ms | vs ZeRO-1 SGD | backward + step ms "
        "| vs ZeRO-1 SGD |",
        "|---|---|---|---|---|---|",
    ]
    for model, res in results.items():
        base = res["ZeRO-1 SGD"]
        for label in CONFIGS:
            m = res[label]
            lines.append(
                f"| {model} | {label} | {m['step']:.2f} | {m['step'] / base['step']:.2f}x "
                f"| {m['total']:.2f} | {m['total'] / base['total']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["ResNet-20", "ResNet-50"])
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: yes, except with --quick)",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of ResNet-50 (ResNet-20: 5x as many)"
    )
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 8)
    per_model = {m: rounds * (5 if m == "ResNet-20" else 1) for m in args.models}
    if args.worker:
        worker(args.models, per_model, 3, args.worker)
        return
    sys.path.insert(0, str(REPO / "tests"))
    from _launch import run_deepspeed

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [__file__, "--worker", out, "--rounds", rounds, "--models", *args.models]
        proc = run_deepspeed(cmd, num_ranks=2, timeout=3600)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        results = json.loads(out.read_text())
    for res in results.values():
        res.pop("_numel")
    text = table(results)
    body = (
        f"{SECTION}\n\n`python bench/lars_zero.py{' --quick' if args.quick else ''}` "
        f"({', '.join(f'{m}: {n}' for m, n in per_model.items())} rounds of 3 steps per "
        f"configuration, medians of rank 0; 2 CPU ranks, gloo, "
        f"OMP_NUM_THREADS=1; {os.cpu_count()} cores, load average {load:.1f} at the start, "
        f"torch {torch.__version__}). Goal: ZeRO-1 LARS at most 1.3x ZeRO-1 SGD.\n\n{text}\n"
    )
    publish(SECTION, body, writes_docs(args), after="## LARS step time")


if __name__ == "__main__":
    main()
