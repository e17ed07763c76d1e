"""Benchmark: cost and agreement of the Hessian probe on CIFAR ResNet-20 shapes.

Prints, measured in one run, the time of one training forward+backward over the probe batch,
our probe (exact and finite-difference), and PyHessian's top eigenvalue restricted to the same
layer (through ``requires_grad``, its only way), with ratios to forward+backward and the relative
difference of the eigenvalues. Two layouts: the probe batch in micro-batches, and in one piece.
For each, the probe's peak tensor memory against one training step's on the same micro-batches
(CPU: the profiler's allocation records; CUDA: ``max_memory_allocated``).

    python bench/probe.py            # 512 samples (4 x 128 and 1 x 512), 20 HVPs each
    python bench/probe.py --quick    # 128 samples (2 x 64 and 1 x 128), 20 HVPs each
    python bench/probe.py --device cuda   # on a GPU (times between torch.cuda.synchronize)

PyHessian is not a project dependency; install it next to the project for this benchmark only
(``bench/requirements-probe.txt``), e.g.
``python -m venv --system-site-packages /tmp/benchenv && /tmp/benchenv/bin/pip install
pyhessian --no-deps`` and run with ``/tmp/benchenv/bin/python``. Without it those rows are
skipped with a message.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (bench/ is sys.path[0] when a bench runs)

from ds_twophase.probe import principal_eigenvalue, resolve_layer  # noqa: E402
from ds_twophase.probe.memory import peak_bytes  # noqa: E402

CE = nn.CrossEntropyLoss()
CPU = torch.device("cpu")


def resnet20() -> nn.Module:
    """ResNet-20 from ds_twophase.models, or an equivalent local definition if absent."""
    try:
        from ds_twophase.models.cifar_resnet import resnet20 as build

        return build()
    except ImportError:
        return _LocalResNet20()


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + short)


class _LocalResNet20(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


def trained_model(steps: int, batch: int) -> nn.Module:
    """ResNet-20 after a few SGD steps on random data (off the initialisation point)."""
    torch.manual_seed(0)
    model = resnet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    # Settle the BatchNorm running statistics (the probe uses them) with a cumulative average.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(batch, 3, 32, 32))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def timed(
    fn: Callable[[], object], repeats: int, device: torch.device = CPU
) -> tuple[float, object]:
    """Median wall time over ``repeats`` runs, and the last result; on CUDA between
    synchronisations, so the time includes the kernels ``fn`` queued."""
    times, out = [], None
    for _ in range(repeats):
        common.synchronize(device)
        start = time.perf_counter()
        out = fn()
        common.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def fwd_bwd(model: nn.Module, batches: list) -> None:
    """One training forward+backward over the probe batch (gradient accumulation)."""
    model.train()
    model.zero_grad(set_to_none=True)
    n = sum(len(y) for _, y in batches)
    for x, y in batches:
        (CE(model(x), y) * (len(y) / n)).backward()


def memory_rows(model: nn.Module, batches: list, layer: list[str], iters: int) -> list:
    """Rows (name, peak bytes) for one training step and the probe on the same micro-batches.

    The micro-batches stay where they are (the host on CPU); the training step is a
    forward+backward per micro-batch with gradient accumulation (what one step does per rank).
    """
    device = next(model.parameters()).device
    trainee = copy.deepcopy(model)
    rows = [("training step (forward+backward per micro-batch)", peak_bytes(
        lambda: fwd_bwd(trainee, batches), device))]  # fmt: skip
    for name, budget in (("probe, exact (graph kept)", 2**31), ("probe, exact (budget 0)", 0)):
        res: dict[str, object] = {}

        def probe(budget: int = budget, res: dict = res) -> None:
            res["r"] = principal_eigenvalue(
                model, CE, batches, layer, max_iters=iters, tol=0, max_graph_bytes=budget
            )

        rows.append((name, peak_bytes(probe, device), res["r"].graph_bytes))
    return rows


def memory_markdown(rows: list, batches: list) -> str:
    """The memory table: peak bytes and the ratio to the training step."""
    base = rows[0][1]
    one = max(x.numel() * x.element_size() for x, _ in batches)
    lines = [
        f"Peak tensor memory (largest micro-batch input: {one / 2**20:.2f} MiB)",
        "",
        "| run | peak MiB | / training step | kept graphs MiB |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        graph = "" if len(row) < 3 else f"{row[2] / 2**20:.2f}"
        lines.append(f"| {row[0]} | {row[1] / 2**20:.2f} | {row[1] / base:.2f} | {graph} |")
    return "\n".join(lines)


def pyhessian_top(model: nn.Module, layer: list[str], batches: list, iters: int) -> float:
    """PyHessian's top eigenvalue for the layer's parameters (all others frozen)."""
    from pyhessian import hessian

    model = copy.deepcopy(model)
    wanted = {id(p) for n in layer for p in model.get_submodule(n).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    model.zero_grad(set_to_none=True)
    cuda = next(model.parameters()).device.type == "cuda"
    if len(batches) == 1:
        h = hessian(model, CE, data=batches[0], cuda=cuda)
    else:
        h = hessian(model, CE, dataloader=batches, cuda=cuda)
    eigs, _ = h.eigenvalues(maxIter=iters, tol=0.0)  # tol 0: exactly maxIter HVPs
    return float(eigs[0])


def run_layout(model: nn.Module, batches: list, iters: int, repeats: int, have_pyhessian: bool):
    """Rows (name, seconds, eigenvalue or None) for one micro-batch layout."""
    layer = resolve_layer(model, "auto", batches[0][0])
    device = next(model.parameters()).device
    trainee = copy.deepcopy(model)  # training updates BN statistics: keep the probed model fixed
    fwd_bwd(trainee, batches)  # warm-up (allocator, oneDNN primitives)
    rows = [
        (
            "training forward+backward",
            timed(lambda: fwd_bwd(trainee, batches), repeats, device)[0],
            None,
        )
    ]

    def ours(method: str, budget: int | None = 2**31):
        return principal_eigenvalue(
            model, CE, batches, layer, max_iters=iters, tol=0, method=method, max_graph_bytes=budget
        ).value

    t, v = timed(lambda: ours("exact"), repeats, device)
    rows.append(("ours, exact (graph kept)", t, v))
    t, v = timed(lambda: ours("exact", 0), max(1, repeats // 2), device)
    rows.append(("ours, exact (graph budget 0: recompute)", t, v))
    t, v = timed(lambda: ours("finite_difference"), max(1, repeats // 2), device)
    rows.append(("ours, finite difference (Eq. 8)", t, v))
    if have_pyhessian:
        mode = "data= one batch" if len(batches) == 1 else "dataloader= micro-batches"
        t, v = timed(
            lambda: pyhessian_top(model, layer, batches, iters), max(1, repeats // 2), device
        )
        rows.append((f"PyHessian ({mode})", t, v))
    converged = principal_eigenvalue(model, CE, batches, layer, max_iters=300, tol=1e-7).value
    return layer, rows, converged


def markdown(title: str, rows: list, converged: float) -> str:
    base = rows[0][1]
    exact = rows[1][2]
    lines = [
        f"**{title}**",
        "",
        "| method | seconds | / fwd+bwd | eigenvalue | rel. diff vs ours exact | rel. diff vs converged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t, v in rows:
        if v is None:
            lines.append(f"| {name} | {t:.3f} | 1.00 | | | |")
        else:
            d_exact = abs(v - exact) / abs(exact)
            d_conv = abs(v - converged) / abs(converged)
            lines.append(
                f"| {name} | {t:.3f} | {t / base:.2f} | {v:.6g} | {d_exact:.1e} | {d_conv:.1e} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run both layouts, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 samples, 1 repeat")
    parser.add_argument("--samples", type=int, default=None, help="probe batch size")
    parser.add_argument("--micro", type=int, default=None, help="micro-batch size")
    parser.add_argument(
        "--iters",
        type=int,
        default=20,
        help="HVPs per method (tol 0): Lanczos steps for ours, power iterations for PyHessian",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    common.add_device_flag(parser)
    args = parser.parse_args()
    samples = args.samples or (128 if args.quick else 512)
    micro = args.micro or (64 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    try:
        import pyhessian  # noqa: F401

        have_pyhessian = True
    except ImportError:
        have_pyhessian = False
        print("PyHessian not importable: its rows are skipped (see bench/requirements-probe.txt)")

    model = trained_model(steps=5, batch=64).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(samples, 3, 32, 32, generator=g),
        torch.randint(0, 10, (samples,), generator=g),
    )
    x, y = x.to(device), y.to(device)
    split = [(x[i : i + micro], y[i : i + micro]) for i in range(0, samples, micro)]
    print(
        f"# Hessian probe benchmark, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} thread(s), device {device}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    for title, batches in (
        (f"{samples} samples in {len(split)} micro-batches of {micro}", split),
        (f"{samples} samples in one batch", [(x, y)]),
    ):
        layer, rows, converged = run_layout(model, batches, args.iters, repeats, have_pyhessian)
        print()
        print(
            markdown(f"{title}, layer {', '.join(layer)}, {args.iters} iterations", rows, converged)
        )
        print(f"\nconverged reference (ours exact, tol 1e-7): {converged:.6g}")
        print()
        print(memory_markdown(memory_rows(model, batches, layer, args.iters), batches))


if __name__ == "__main__":
    main()
