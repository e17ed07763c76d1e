"""Benchmark: what ``margin_summary`` costs per epoch on MNIST-1D, against a training epoch.

Measures in one process, on the data and model of ``configs/mnist1d/two_phase_lars.json``
(16,000 training samples, ``mnist1d_cnn``, random initialisation: the cost does not depend on the
weights):

1. one training epoch as plain torch does it (forward, cross-entropy, backward, SGD step, micro
   batches of 256), against ``ds_twophase.analysis.margins.margin_summary`` over the whole
   training set (batches of 512). Alternated (ABBA) for ``--rounds`` rounds; medians of wall and
   CPU seconds (``time.process_time``: on a shared machine the wall clock mostly measures the
   other jobs).
2. the batched per-sample gradient (one backward per batch) against one backward per sample, on
   the first ``--per-sample`` samples, with the largest difference between the two answers.

    python bench/margins.py            # 3 rounds; writes docs/benchmarks.md (## Margins cost)
    python bench/margins.py --quick    # 1 round, prints only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ds_twophase.analysis.margins import margin_summary, normalised_margins  # noqa: E402
from ds_twophase.data import DatasetConfig, build_datasets  # noqa: E402
from ds_twophase.models import ModelConfig, build_model  # noqa: E402


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def train_epoch(model, x, y, micro=256):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for start in range(0, len(x), micro):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[start : start + micro]), y[start : start + micro]).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-sample", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="1 round, print only")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    torch.manual_seed(0)
    splits = build_datasets(DatasetConfig(name="mnist1d", train_size=16000, test_size=4000))
    model = build_model(ModelConfig(name="mnist1d_cnn"), splits.num_classes, splits.input_shape)
    x, y = torch.utils.data.default_collate([splits.train[i] for i in range(len(splits.train))])
    times: dict[str, list[tuple[float, float]]] = {"train epoch": [], "margin_summary": []}
    jobs = {
        "train epoch": lambda: train_epoch(model, x, y),
        "margin_summary": lambda: margin_summary(model, splits.train, "cpu", 512),
    }
    for r in range(rounds):
        order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
        for name in order:
            times[name].append(timed(jobs[name]))
    med = {
        n: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
        for n, v in times.items()
    }
    n = args.per_sample
    model.eval()
    batched_t = timed(lambda: normalised_margins(model, x[:n]))
    single_t = timed(lambda: [normalised_margins(model, x[i : i + 1]) for i in range(n)])
    diff = (
        (
            normalised_margins(model, x[:n])
            - torch.cat([normalised_margins(model, x[i : i + 1]) for i in range(n)])
        )
        .abs()
        .max()
    )
    lines = [
        "## Margins cost",
        "",
        f"`python bench/margins.py{' --quick' if args.quick else ''}` on {torch.get_num_threads()} "
        f"torch thread(s), {rounds} round(s), medians; MNIST-1D, 16,000 training samples, "
        "`mnist1d_cnn`.",
        "",
        "| work | wall s | CPU s | CPU ratio to a training epoch |",
        "|---|---|---|---|",
    ]
    base_cpu = med["train epoch"][1]
    for name, (wall, cpu) in med.items():
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / base_cpu:.2f} |")
    lines += [
        "",
        f"Per-sample gradient norms on {n} samples: one backward per batch {batched_t[1]:.3f} CPU s, "
        f"one backward per sample {single_t[1]:.3f} CPU s ({single_t[1] / batched_t[1]:.0f}x); "
        f"largest difference between the two answers {float(diff):.2e}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        from common import write_section

        write_section("## Margins cost", text)


if __name__ == "__main__":
    main()
