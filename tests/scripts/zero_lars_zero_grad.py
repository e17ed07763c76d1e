"""Run under the deepspeed launcher on 2 ranks: LARS at ZeRO stage 0 and 1 where the first real
step gives one rank's whole partition a zero gradient.

Two 4x8 weights; under ZeRO-1 rank 0 holds ``first`` and rank 1 ``second``, and the first batch
gives ``second`` no gradient. Rank 1 alone would take that step for DeepSpeed's set-up step
(all-zero gradients, no state yet) and skip the norm all-reduce that rank 0 waits in. Rank 0
writes the final parameters of each stage and each rank's fragments to ``<out>/result.json``.
"""

import json
import sys
from pathlib import Path

import deepspeed
import torch

import ds_twophase
from ds_twophase import dist
from ds_twophase.dist import exit_process
from ds_twophase.optim.lars import zero as zero_lars


class TwoWeights(torch.nn.Module):
    """loss = sum(first * x) + scale * sum(second * x)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.first = torch.nn.Parameter(torch.randn(4, 8, generator=g))
        self.second = torch.nn.Parameter(torch.randn(4, 8, generator=g))

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return (self.first * x).sum() + scale * (self.second * x).sum()


def train(stage: int, world: int) -> tuple[dict, list[int] | None]:
    cfg = {
        "train_batch_size": world,
        "train_micro_batch_size_per_gpu": 1,
        "steps_per_print": 10**6,
        "optimizer": {
            "type": "LARS",
            "params": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
        },
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = ds_twophase.initialize(model=TwoWeights(), config=cfg)
    for step, scale in enumerate([0.0, 1.0, 1.0]):
        x = torch.full((4, 8), 1.0 + step + dist.get_rank())
        engine.backward(engine(x, scale))
        engine.step()
    fragments = None
    if stage:
        flat = engine.optimizer.single_partition_of_fp32_groups[0]
        layout = zero_lars.find_layout(flat, [list(engine.module.parameters())])
        fragments = None if layout is None else layout.index
    params = {n: p.detach().flatten().tolist() for n, p in engine.module.named_parameters()}
    return params, fragments


def main() -> None:
    out = Path(next(a for a in sys.argv[1:] if not a.startswith("--local_rank")))
    deepspeed.init_distributed()
    world = dist.get_world_size()
    result = {}
    for stage in (0, 1):
        params, fragments = train(stage, world)
        result[f"stage{stage}"] = params
        result[f"fragments{stage}"] = dist.all_gather_object(fragments)
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
