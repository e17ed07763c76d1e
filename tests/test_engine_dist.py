"""TwoPhaseLR through ds_twophase.initialize on a real 2-rank DeepSpeed engine (gloo, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ds_twophase.schedulers import TwoPhaseLR

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from _launch import run_deepspeed  # noqa: E402
from engine_schedule import HMAX, LOSSES, config  # noqa: E402


def expected_log(steps_per_epoch: int) -> list:
    """The LR after every optimizer step and epoch end, from a scheduler driven by hand."""
    params = dict(config(0)["scheduler"]["params"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = TwoPhaseLR(opt, steps_per_epoch=steps_per_epoch, total_epochs=len(LOSSES), **params)
    out, step = [], 0
    for epoch in range(1, len(LOSSES) + 1):
        for _ in range(steps_per_epoch):
            sched.step()
            step += 1
            out.append(["step", step, sched.get_last_lr()])
        rec = sched.end_epoch(LOSSES[epoch - 1], lambda e=epoch: HMAX[e - 1])
        out.append(["epoch", epoch, sched.get_last_lr(), rec.decision])
    return out


@pytest.mark.multiproc
@pytest.mark.timeout(300)
@pytest.mark.slow
def test_engine_follows_schedule_and_checkpoint_restores_it(tmp_path):
    proc = run_deepspeed(["tests/scripts/engine_schedule.py", "--out", tmp_path, "--stages", "0,1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 64 samples over 2 ranks, micro-batch 4, 2 accumulation steps -> 4 optimizer steps per epoch
    expected = expected_log(4)
    assert [e[3] for e in expected if e[0] == "epoch"] == [
        "none",
        "switch",
        "decay",
        "keep",
        "decay",
        "keep",
    ]
    for stage in (0, 1):
        for rank in (0, 1):
            rec = json.loads((tmp_path / f"stage{stage}_rank{rank}.json").read_text())
            assert rec["world"] == 2 and rec["steps_per_epoch"] == 4
            assert rec["first"] == expected, f"stage {stage} rank {rank}"
            # the checkpoint taken after epoch 3 restores the schedule, also under ZeRO-1 whose
            # optimizer loads its own LR after the scheduler
            assert rec["loaded"] == rec["saved"]
            assert rec["saved"]["lr"] == [0.05]
            resumed_from = expected.index(["epoch", 3, [0.05], "decay"]) + 1
            assert rec["resumed"] == expected[resumed_from:]
            assert rec["params_equal"]
