"""Run under the deepspeed launcher: LARS from the JSON through ds_twophase.initialize.

Checks, per rank, written to ``<out>/lars_rank<R>.json``: the engine's optimizer is our LARS with
biases and norms in a non-adapted group; one engine step equals a reference LARS step on the
all-reduced gradients; a checkpoint restores the momentum buffers so training continues
identically.
"""

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import ds_twophase
from ds_twophase import LARS, dist
from ds_twophase.dist import exit_process

CONFIG = {
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 16,
    "steps_per_print": 1000000,
    "optimizer": {
        "type": "LARS",
        "params": {"lr": 0.5, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 0.02},
    },
    "scheduler": {"type": "WarmupStepLR", "params": {"warmup_epochs": 0, "milestones": [2]}},
}


def make_engine():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(128, 6, generator=g), torch.randint(0, 3, (128,), generator=g)
    )
    engine, optimizer, loader, _ = ds_twophase.initialize(
        model=model, training_data=data, config=CONFIG, total_epochs=4
    )
    return engine, optimizer, loader


def epoch(engine, loader, e):
    loader.data_sampler.set_epoch(e)
    for x, y in loader:
        engine.backward(F.cross_entropy(engine(x), y))
        engine.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    engine, optimizer, loader = make_engine()
    groups = [
        {"n": len(g["params"]), "adapt": g["adapt"], "wd": g["weight_decay"]}
        for g in optimizer.param_groups
    ]

    # one step by hand: the reference LARS gets the same (all-reduced) gradients
    x, y = next(iter(loader))
    engine.backward(F.cross_entropy(engine(x), y))
    reference = copy.deepcopy(engine.module)
    ref_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    by_id = {id(p): name for name, p in engine.module.named_parameters()}
    ref_params = dict(reference.named_parameters())
    for src, dst in zip(optimizer.param_groups, ref_groups, strict=True):
        dst["params"] = [ref_params[by_id[id(p)]] for p in src["params"]]
        for p in src["params"]:
            ref_params[by_id[id(p)]].grad = p.grad.clone()
    ref_opt = LARS(ref_groups, lr=0.5, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.02)
    ref_opt.step()
    engine.step()
    step_equal = all(
        torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(engine.module.parameters(), reference.parameters(), strict=True)
    )

    epoch(engine, loader, 1)
    engine.save_checkpoint(str(out / "ckpt"), tag="t")
    epoch(engine, loader, 2)
    engine2, _, loader2 = make_engine()
    ds_twophase.load_checkpoint(engine2, out / "ckpt", tag="t")
    epoch(engine2, loader2, 2)
    resumed_equal = all(
        torch.equal(a, b)
        for a, b in zip(engine.module.parameters(), engine2.module.parameters(), strict=True)
    )
    record = {
        "optimizer": type(engine.optimizer).__name__,
        "basic": type(engine.basic_optimizer).__name__
        if hasattr(engine, "basic_optimizer")
        else None,
        "groups": groups,
        "step_equal": step_equal,
        "resumed_equal": resumed_equal,
        "lr": engine.get_lr(),
    }
    (out / f"lars_rank{dist.get_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
