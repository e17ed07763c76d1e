"""Resume a checkpoint in one process and report what each stateful part holds, for
tests/test_checkpoint_compat.py.

Usage: ``resume_state.py OUT_JSON --config C [--set k=v ...] --resume TARGET``. Builds the trainer,
resumes (nothing is trained) and writes the epoch resumed, the scheduler's state, both probes'
states (vectors as lists) and the mid-epoch progress to OUT_JSON.
"""

from __future__ import annotations

import json
from typing import Any

from one_trainer import build_trainer, parser

from ds_twophase.dist import exit_process


def plain(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """``state`` with its tensors as lists (JSON)."""
    if state is None:
        return None
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in state.items()}


def main() -> None:
    args = parser().parse_args()
    trainer = build_trainer(args)
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
