"""LARS from the DeepSpeed JSON on a real 2-rank engine; refused under ZeRO before training."""

from __future__ import annotations

import json

import pytest
from _launch import run_deepspeed

from ds_twophase.config import validate_config
from ds_twophase.errors import ConfigError


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_lars_json_path_step_and_checkpoint_round_trip(tmp_path):
    proc = run_deepspeed(["tests/scripts/engine_lars.py", "--out", tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"lars_rank{rank}.json").read_text())
        assert rec["basic"] == "LARS"
        # two weight matrices adapted and decayed; 2 biases + BatchNorm weight and bias excluded
        assert rec["groups"] == [
            {"n": 2, "adapt": True, "wd": 0.0005},
            {"n": 4, "adapt": False, "wd": 0.0},
        ]
        assert rec["step_equal"], "an engine step differs from LARS on the all-reduced gradients"
        assert rec["resumed_equal"], "momentum buffers were not restored from the checkpoint"
        assert rec["lr"] == [pytest.approx(0.05)] * 2  # WarmupStepLR decayed after epoch 2


def test_lars_under_zero3_is_refused_before_training():
    cfg = {
        "train_batch_size": 32,
        "optimizer": {"type": "LARS", "params": {"lr": 1.0}},
        "zero_optimization": {"stage": 3},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=2)
    assert info.value.messages == [
        "zero_optimization.stage: LARS works with stages 0, 1 and 2, not 3 (ZeRO-3 partitions "
        "carry no per-layer mapping for the trust ratios); set zero_optimization.stage to 0, 1 "
        "or 2"
    ]


@pytest.mark.parametrize("stage", [1, 2])
def test_lars_under_zero1_and_2_is_accepted(stage):
    cfg = {
        "train_batch_size": 32,
        "optimizer": {"type": "LARS", "params": {"lr": 1.0}},
        "zero_optimization": {"stage": stage},
    }
    run = validate_config(cfg, world_size=2)
    assert run.optimizer.type == "LARS"
    # DeepSpeed asserts on client optimizers under ZeRO without this
    assert run.deepspeed["zero_allow_untested_optimizer"] is True


def test_lars_with_optimizer_offload_gets_deepspeeds_switch():
    """DeepSpeed refuses a client optimizer under ZeRO-Offload unless told not to; LARS's fused
    CPU kernel is what steps the offloaded partition, so validation sets the switch."""
    cfg = {
        "train_batch_size": 32,
        "optimizer": {"type": "LARS", "params": {"lr": 1.0}},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    }
    run = validate_config(cfg, world_size=2)
    assert run.deepspeed["zero_force_ds_cpu_optimizer"] is False
    assert (
        "zero_force_ds_cpu_optimizer"
        not in validate_config({**cfg, "zero_optimization": {"stage": 2}}, world_size=2).deepspeed
    )


@pytest.mark.parametrize(
    "key,value,where",
    [
        ("zero_allow_untested_optimizer", False, "zero_optimization.stage 1"),
        ("zero_force_ds_cpu_optimizer", True, "optimizer offload"),
    ],
)
def test_lars_with_deepspeeds_refusing_switch_is_one_line(key, value, where):
    cfg = {
        "train_batch_size": 32,
        "optimizer": {"type": "LARS", "params": {"lr": 1.0}},
        "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}},
        key: value,
    }
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=2)
    assert str(info.value) == (
        f"{key}: {str(value).lower()} makes DeepSpeed refuse LARS under {where}; "
        f"remove it or set it to {str(not value).lower()}"
    )
