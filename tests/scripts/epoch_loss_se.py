"""Run under the deepspeed launcher: ``train_epoch``'s loss and standard error on 2 ranks.

Each rank trains one epoch of a tiny model through ``ds_twophase.trainer.epoch.train_epoch`` with
``skip_nonfinite`` while ``DS_TWOPHASE_NAN_LOSS`` (set by the test) poisons one micro-batch of
rank 1, so the ranks contribute different numbers of finite losses. The engine is wrapped so that
every micro-batch's loss is also recorded here, computed from the same forward output; each rank
writes its losses and what ``train_epoch`` returned to ``<out>/rank<R>.json``.
"""

import argparse
import json
import math
import os
from pathlib import Path

import torch

import ds_twophase
from ds_twophase import dist
from ds_twophase.dist import exit_process
from ds_twophase.trainer.epoch import cross_entropy, train_epoch


class Recording:
    """The real engine, with each forward's loss on its targets written down."""

    def __init__(self, engine, targets):
        self.engine = engine
        self.targets = targets
        self.losses: list[float] = []

    def __call__(self, x):
        out = self.engine(x)
        self.losses.append(float(cross_entropy(out, self.targets.pop(0)).double()))
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(96, 4, generator=g), torch.randint(0, 3, (96,), generator=g)
    )
    config = {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 1},
    }
    engine, _, loader, _ = ds_twophase.initialize(model=model, training_data=data, config=config)
    loader.data_sampler.set_epoch(1)
    batches = list(loader)
    spy = Recording(engine, [y for _, y in batches])
    mean, se, skipped = train_epoch(
        spy, batches, 1, micro_batches=len(batches), seed=0, skip_nonfinite=True, gas=2
    )
    rank = dist.get_rank()
    finite = [v for v in spy.losses if math.isfinite(v)]
    # the poisoned micro-batch's loss is NaN only inside train_epoch: drop it here too
    epoch, micro_batch, target = (int(p) for p in os.environ["DS_TWOPHASE_NAN_LOSS"].split(":"))
    if epoch == 1 and rank == target:
        finite.pop(micro_batch)
    record = {"losses": finite, "mean": mean, "se": se, "skipped": skipped}
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
