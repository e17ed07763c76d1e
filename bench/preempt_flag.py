"""Benchmark: the cost of the pre-emption agreement (one all-reduce max per optimizer step).

Run on 2 ranks (gloo on CPU, or NCCL on GPUs)::

    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 bench/preempt_flag.py [--rounds 4] [--train-size 4000]

Builds the trainer of ``configs/tiny/mnist1d_2rank.json`` (with ``--train-size`` samples, so
an epoch has more steps) and times whole training epochs (``Trainer.train_epoch``) with the
agreement asked after every optimizer step (``train_epoch(stop=flag)``: what ``fit`` does) and without
it, interleaved ABBA after one warmup epoch each; prints the median epoch times, their ratio and
the mean time of one ``dist.any_rank`` call measured alone (1000 calls).
"""

from __future__ import annotations

import argparse
import statistics
import time

from ds_twophase import dist
from ds_twophase.config import load_config, validate_config
from ds_twophase.trainer import StopFlag, Trainer

TINY = "configs/tiny/mnist1d_2rank.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raw = load_config(
        TINY,
        [
            f"trainer.dataset.train_size={args.train_size}",
            "trainer.output_dir=/tmp/ds_twophase_bench_preempt",
            "trainer.progress=off",
        ],
    )
    run = validate_config(raw, world_size=dist.launch_world_size())
    dist.init_process_group(quiet=True)
    trainer = Trainer(run)
    times: dict[str, list[float]] = {"with agreement": [], "without": []}
    flag = StopFlag()  # never entered: its flag stays down, as in a run nobody signals
    epoch = 0
    order = ["with agreement", "without"]
    for warm in order:  # one warmup epoch each
        epoch += 1
        trainer.train_epoch(epoch, stop=flag if warm == "with agreement" else None)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            stop = flag if name == "with agreement" else None
            epoch += 1
            dist.barrier()
            t0 = time.perf_counter()
            trainer.train_epoch(epoch, stop=stop)
            times[name].append(time.perf_counter() - t0)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(1000):
        dist.any_rank(False)
    per_call = (time.perf_counter() - t0) / 1000
    steps = trainer.steps_per_epoch
    with_a, without = (statistics.median(times[k]) for k in order)
    dist.print_rank_zero(
        f"ranks {dist.get_world_size()}, {steps} optimizer steps/epoch, {args.rounds} rounds ABBA\n"
        f"median epoch with agreement {with_a:.4f} s, without {without:.4f} s, "
        f"ratio {with_a / without:.3f}\n"
        f"one dist.any_rank call alone: {per_call * 1e6:.0f} us "
        f"({per_call * steps / without * 100:.2f}% of an epoch without it)"
    )


if __name__ == "__main__":
    main()
