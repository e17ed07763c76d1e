"""Benchmark: what the standard-error pass (issue 21: ``hmax_se``, ``probe_loss``,
``probe_loss_se``) adds to one Hessian probe.

After its Lanczos iteration the probe makes one more pass over the probe batch
(``ds_twophase.probe.uncertainty.sample_sums``: a forward and three backward passes through the
probed layer's tail). Measured in one process, interleaved round by round: the whole probe
(``principal_eigenvalue``, the pass included) and the pass alone on the same micro-batches and
Ritz vector, under the probe's own modes. Reported: the probe with the pass against the probe
without it, ``probe / (probe - pass)``, from medians. Goal (issue 21): at most 1.5x.

    python bench/probe_se.py            # MNIST-1D CNN (probe 128) and ResNet-20 (probe 512), 20 HVPs
    python bench/probe_se.py --quick    # 3 rounds, prints only
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from common import bench_parser, git_state, machine_line, md_table, publish, writes_docs
from torch import nn

from ds_twophase.models.cifar_resnet import resnet20
from ds_twophase.models.mnist1d_cnn import mnist1d_cnn
from ds_twophase.probe import (
    Functional,
    preserve_rng_state,
    principal_eigenvalue,
    probe_modes,
    resolve_layer,
)
from ds_twophase.probe.functional import InferenceBatchNormAsAffine
from ds_twophase.probe.uncertainty import sample_sums

HEADING = "## Probe: cost of the standard-error pass (issue 21)"
CE = nn.CrossEntropyLoss()
HVPS = 20

# name, model, one sample's shape, probe batch, micro-batch
CASES = [
    ("MNIST-1D CNN", lambda: mnist1d_cnn(10), (1, 40), 128, 128),
    ("ResNet-20", resnet20, (3, 32, 32), 512, 128),
]


def batches_for(
    shape: tuple[int, ...], size: int, micro: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(micro, *shape, generator=g), torch.randint(0, 10, (micro,), generator=g))
        for _ in range(size // micro)
    ]


def the_pass(model: nn.Module, batches: list, layer: list[str], vector: torch.Tensor) -> float:
    """Seconds of the standard-error pass alone, in the modes the probe runs it."""
    start = time.perf_counter()
    with probe_modes(model, "eval"), preserve_rng_state():
        fn = Functional(model, CE, layer)
        with torch.enable_grad(), InferenceBatchNormAsAffine():
            sample_sums(fn, batches, vector)
    return time.perf_counter() - start


def measure(name: str, build, shape, size: int, micro: int, rounds: int) -> list:
    torch.manual_seed(0)
    model = build().eval()
    batches = batches_for(shape, size, micro)
    layer = resolve_layer(model, "auto", batches[0][0])
    probe, alone = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        res = principal_eigenvalue(model, CE, batches, layer, max_iters=HVPS, tol=0.0)
        probe.append(time.perf_counter() - start)
        assert res.vector is not None, f"{name}: the probe failed"
        alone.append(the_pass(model, batches, layer, res.vector))
    p, a = statistics.median(probe), statistics.median(alone)
    return [name, f"{size} ({size // micro} x {micro})", ", ".join(layer), f"{1000 * p:.0f}",
            f"{1000 * a:.0f}", f"{p / (p - a):.2f}x"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "3 rounds, prints only")
    parser.add_argument("--rounds", type=int, default=10)
    args: argparse.Namespace = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    rows = [measure(*case, rounds=rounds) for case in CASES]
    table = md_table(
        ["model", "probe batch", "probed layer", f"probe ms ({HVPS} HVPs, pass included)",
         "pass ms", "probe / probe without the pass"],
        rows,
    )  # fmt: skip
    section = "\n".join([
        HEADING, "",
        f"`python bench/probe_se.py` ({rounds} rounds, medians; one torch thread; random data; "
        f"{machine_line()}; {git_state()}; {datetime.date.today()}). Goal: at most 1.5x.", "",
        table,
    ])  # fmt: skip
    publish(HEADING, section, writes_docs(args))


if __name__ == "__main__":
    main()
