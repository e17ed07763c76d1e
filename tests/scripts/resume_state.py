"""Resume a checkpoint in one process and report what each stateful part holds, for
tests/test_checkpoint_compat.py.

Usage: ``resume_state.py OUT_JSON --config C [--set k=v ...] --resume TARGET``. Builds the trainer,
resumes (nothing is trained) and writes the epoch resumed, the scheduler's state, both probes'
states (vectors as lists) and the mid-epoch progress to OUT_JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ds_twophase import dist
from ds_twophase.config import load_config, validate_config
from ds_twophase.dist import exit_process
from ds_twophase.trainer import Trainer


def plain(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """``state`` with its tensors as lists (JSON)."""
    if state is None:
        return None
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in state.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--resume", required=True)
    args = p.parse_args()
    dist.init_process_group(quiet=True)
    dist.release_deepspeed_shm()
    run = validate_config(load_config(args.config, args.overrides), world_size=1)
    trainer = Trainer(run)
    epoch = trainer.resume(args.resume)
    parts = trainer.checkpoint_parts
    progress = parts["partial"].progress  # type: ignore[attr-defined]
    result = {
        "epoch": epoch,
        "global_steps": trainer.engine.global_steps,
        "lr": trainer.engine.get_lr()[0],
        "scheduler": parts["scheduler"].state_dict(),
        "probe": plain(parts["probe"].state_dict()),
        "probe_every": plain(parts["probe_every"].state_dict()),
        "progress": None
        if progress is None
        else {
            "micro_batches": progress.micro_batches,
            "loss_sum": progress.loss_sum,
            "finite": progress.finite,
            "loss_squares": progress.loss_squares,
            "rng_state": progress.rng_state.tolist(),
        },
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation (see ds_twophase.dist).
    exit_process(main() or 0)
