"""Run under the deepspeed launcher: TwoPhaseLR through ds_twophase.initialize on a real engine.

For each ZeRO stage given, trains a tiny model for a few epochs with gradient accumulation,
records the engine's LR after every optimizer step and every epoch end, saves a checkpoint
mid-convergence, loads it into a fresh engine and continues. Each rank writes its records to
``<out>/stage<S>_rank<R>.json`` for the test to compare.
"""

import argparse
import json
from pathlib import Path

import torch

import ds_twophase
from ds_twophase import dist
from ds_twophase.dist import exit_process

# The plateau detector ignores the 2 warmup epochs (ceil(1.5)): max_exploration_epochs forces
# the switch at 2, inside the LR warmup, so decays multiply a warmup factor.
LOSSES = [1.0, 1.0, 1.1, 1.2, 1.3, 1.4]
HMAX = [None, 1.0, 2.0, 3.0, 4.0, 5.0]  # decays at 3 and 5


def config(stage: int) -> dict:
    return {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "steps_per_print": 1000,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "scheduler": {
            "type": "TwoPhaseLR",
            "params": {
                "warmup_epochs": 1.5,
                "plateau_patience": 1,
                "extra_epochs_ratio": 0,
                "decay_factor": 0.5,
                "max_exploration_epochs": 2,
            },
        },
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "trainer": {"epochs": len(LOSSES)},
    }


def make_engine(stage: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    )
    engine, _, loader, sched = ds_twophase.initialize(
        model=model, training_data=data, config=config(stage)
    )
    return engine, loader, sched


def run_epoch(engine, loader, sched, epoch: int, log: list) -> None:
    loader.data_sampler.set_epoch(epoch)
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        if boundary:
            log.append(["step", engine.global_steps, engine.get_lr()])
    rec = sched.end_epoch(LOSSES[epoch - 1], lambda: HMAX[epoch - 1])
    log.append(["epoch", epoch, engine.get_lr(), rec.decision])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default="0,1")
    args = parser.parse_args()
    out = Path(args.out)
    for stage in [int(s) for s in args.stages.split(",")]:
        engine, loader, sched = make_engine(stage)
        first: list = []
        saved = {}
        for epoch in range(1, len(LOSSES) + 1):
            run_epoch(engine, loader, sched, epoch, first)
            if epoch == 3:
                engine.save_checkpoint(str(out / f"ckpt{stage}"), tag="e3")
                saved = {"state": sched.state_dict(), "lr": engine.get_lr()}
        engine2, loader2, sched2 = make_engine(stage)
        ds_twophase.load_checkpoint(engine2, out / f"ckpt{stage}", tag="e3")
        loaded = {"state": sched2.state_dict(), "lr": engine2.get_lr()}
        resumed: list = []
        for epoch in range(4, len(LOSSES) + 1):
            run_epoch(engine2, loader2, sched2, epoch, resumed)
        record = {
            "steps_per_epoch": sched.steps_per_epoch,
            "world": dist.get_world_size(),
            "first": first,
            "saved": saved,
            "loaded": loaded,
            "resumed": resumed,
            "params_equal": all(
                torch.equal(a, b)
                for a, b in zip(
                    engine.module.parameters(), engine2.module.parameters(), strict=True
                )
            ),
        }
        (out / f"stage{stage}_rank{dist.get_rank()}.json").write_text(json.dumps(record))
        dist.barrier()


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
