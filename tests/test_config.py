"""Config validation: every bad input is one clear line naming the key; exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ds_twophase.config import apply_override, load_config, validate_config
from ds_twophase.errors import ConfigError

BASE = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 16,
    "gradient_accumulation_steps": 2,
    "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
    "scheduler": {"type": "TwoPhaseLR", "params": {"warmup_epochs": 2}},
    "trainer": {
        "epochs": 20,
        "dataset": {"name": "synthetic", "train_size": 256, "test_size": 64},
        "model": {"name": "resnet20"},
    },
}


def with_changes(*changes: str) -> dict:
    cfg = json.loads(json.dumps(BASE))
    for change in changes:
        if change.startswith("-"):
            del cfg[change[1:]]
        else:
            apply_override(cfg, change)
    return cfg


def test_base_config_is_valid():
    run = validate_config(BASE, world_size=2)
    assert run.scheduler.type == "TwoPhaseLR"
    assert run.optimizer is None  # SGD is DeepSpeed's to build
    assert "trainer" not in run.deepspeed and "scheduler" not in run.deepspeed
    assert run.deepspeed["optimizer"]["type"] == "SGD"
    assert run.trainer.epochs == 20 and run.trainer.model.name == "resnet20"
    assert run.probe.mode == "rank0"


# (overrides, world size, expected fragment of the single error line)
BAD = [
    (["scheduler.params.decay_factor=1.5"], 2, "scheduler.params.decay_factor"),
    (["scheduler.params.decay_factor=0"], 2, "scheduler.params.decay_factor"),
    (["scheduler.params.plateau_patience=-1"], 2, "scheduler.params.plateau_patience"),
    (['scheduler.params.warmup_epochs="ten"'], 2, "scheduler.params.warmup_epochs"),
    (["scheduler.params.decay_factr=0.5"], 2, "did you mean 'decay_factor'"),
    (["scheduler.params.min_lr=5"], 2, "scheduler.params.min_lr"),
    (["scheduler.params.max_exploration_epochs=0"], 2, "scheduler.params.max_exploration_epochs"),
    (["scheduler.params.extra_epochs_ratio=-1"], 2, "scheduler.params.extra_epochs_ratio"),
    (['scheduler.params.rise="signifcant"'], 2, "scheduler.params.rise: must be one of"),
    (
        ['scheduler.params.rise="significant"', "scheduler.params.rise_z=-1"],
        2,
        "scheduler.params.rise_z",
    ),
    (["scheduler.params.rise_z=2"], 2, 'has no effect with rise "paper"'),
    (['scheduler.params.rise_loss="probe"'], 2, "scheduler.params.rise_loss"),
    (["scheduler.params.min_lr_ratio=1"], 2, "scheduler.params.min_lr_ratio"),
    (['scheduler.params.convergence="late"'], 2, "scheduler.params.convergence"),
    (
        ['scheduler.params.convergence="late_step"', 'scheduler.params.rise_loss="probe_batch"'],
        2,
        "late_step compares no loss",
    ),
    (
        ['scheduler.params.convergence="late_step"', 'scheduler.params.rise="significant"'],
        2,
        "late_step compares nothing",
    ),
    (["scheduler.type=TwoPhaseLr"], 2, "did you mean 'TwoPhaseLR'"),
    (["scheduler.type=ReduceLROnPlateau"], 2, "batch size as the metric"),
    (["scheduler.type=WarmupStepLR", "scheduler.params.gamma=2"], 2, "scheduler.params.gamma"),
    (['scheduler.params.probe.mode="rank1"'], 2, "scheduler.params.probe.mode"),
    (["scheduler.params.probe.max_iter=5"], 2, "did you mean 'max_iters'"),
    (["zero_optimization.stage=3", "zero_allow_untested_optimizer=true"], 2, 'use "sharded"'),
    (["zero_optimization.stage=1"], 2, "zero_allow_untested_optimizer"),  # SGD is untested
    (["zero_optimization.stage=4"], 2, "zero_optimization.stage"),
    (["optimizer.type=Adamm"], 2, "did you mean"),
    (["optimizer.type=LARS", "optimizer.params.trust_coefficent=0.01"], 2, "trust_coefficient"),
    (["optimizer.type=LARS", "optimizer.params.momentum=-1"], 2, "optimizer.params.momentum"),
    (
        [
            "optimizer.type=LARS",
            "zero_optimization.stage=3",
            'scheduler.params.probe.mode="sharded"',
        ],
        2,
        "works with stages 0, 1 and 2",
    ),
    ([], 3, "train_batch_size"),  # 64 != 16 x 2 x 3
    (["train_batch_size=60", "-gradient_accumulation_steps"], 2, "train_batch_size"),
    (["train_batch_size=0"], 2, "train_batch_size"),
    (["fp16.enabled=true"], 2, "fp16.enabled"),
    (["schedular={}"], 2, "did you mean 'scheduler'"),
    (["trainer.epochs=-3"], 2, "trainer.epochs"),
    (["trainer.epoch=3"], 2, "did you mean 'epochs'"),
    (["trainer.dataset.name=mnist1e"], 2, "did you mean 'mnist1d'"),
    (["trainer.model.name=resnet21"], 2, "trainer.model.name"),
    (
        ["scheduler.type=WarmupStepLR", 'scheduler.params.probe.mode="sharded"'],
        2,
        "set probe.every",
    ),
    (["scheduler.params.probe.every=0"], 2, "scheduler.params.probe.every"),
    (["trainer.margins_every=-1"], 2, "trainer.margins_every"),
    (
        [
            "zero_optimization.stage=3",
            "zero_allow_untested_optimizer=true",
            'scheduler.params.probe.mode="sharded"',
            "trainer.margins_every=2",
        ],
        2,
        "trainer.margins_every",
    ),
]


@pytest.mark.parametrize("changes,world,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_is_one_clear_line(changes, world, fragment):
    cfg = with_changes(*changes)
    if fragment == "fp16.enabled":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("fp16 is valid on a machine with a GPU")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=world)
    messages = info.value.messages
    assert len(messages) == 1, messages
    assert fragment in messages[0]
    assert "\n" not in messages[0] and "Traceback" not in messages[0]


def test_rule_options_are_valid_config():
    cfg = with_changes(
        'scheduler.params.rise="significant"',
        "scheduler.params.rise_z=1.5",
        'scheduler.params.rise_loss="probe_batch"',
        "scheduler.params.min_lr_ratio=0.01",
        'scheduler.params.convergence="loss_only"',
    )
    run = validate_config(cfg, world_size=2)
    assert run.scheduler.params["rise_z"] == 1.5


def test_all_problems_are_reported_together():
    cfg = with_changes("scheduler.params.decay_factor=2", "trainer.epochs=0")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=2)
    assert len(info.value.messages) == 2


def test_override_parsing():
    cfg = {"a": {"b": 1}}
    apply_override(cfg, "a.b=2.5")
    apply_override(cfg, "a.c.d=hello")
    apply_override(cfg, "x=[1, 2]")
    assert cfg == {"a": {"b": 2.5, "c": {"d": "hello"}}, "x": [1, 2]}
    for bad in ("novalue", "=3", "a..b=1", "a.b.c=1"):
        with pytest.raises(ConfigError, match="--set"):
            apply_override(cfg, bad)


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": 64,\n  "optimizer": {"type": "SGD",}\n}\n')
    with pytest.raises(ConfigError, match="line 3 column"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds_twophase.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_config_command(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    ok = run_cli("check-config", str(good), "--world-size", "2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok:")
    bad = run_cli(
        "check-config",
        str(good),
        "--world-size",
        "2",
        "--set",
        "scheduler.params.decay_factor=1.5",
        "--set",
        "trainer.epochs=0",
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in bad.stderr


def test_problems_carry_their_key_as_data():
    with pytest.raises(ConfigError) as info:
        validate_config(with_changes("trainer.epochs=0", "scheduler.params.decay_factor=2"))
    keys = [p.key for p in info.value.problems]
    assert keys == ["scheduler.params.decay_factor", "trainer.epochs"]
    assert "trainer.epochs: must be an integer >= 1, got 0" in info.value.messages
    assert str(ConfigError(key="a.b", problem="is bad")) == "a.b: is bad"


def test_world_size_is_checked_once_it_is_known():
    run = validate_config(BASE)  # the launcher did not say: no batch arithmetic yet
    assert run.batch is None
    with pytest.raises(ConfigError, match="train_batch_size: 64 != .* 16 x 2 x 3"):
        run.check_world_size(3)
    batch = run.check_world_size(2)
    assert (batch.train, batch.micro, batch.gas, batch.world_size) == (64, 16, 2, 2)
    assert run.check_world_size(2) is batch


def test_validation_builds_the_optimizer_factory_the_engine_uses():
    import torch

    from ds_twophase.optim import LARS

    run = validate_config(with_changes('optimizer={"type": "LARS", "params": {"lr": 0.5}}'))
    assert run.optimizer_factory is not None and "optimizer" not in run.deepspeed
    model = torch.nn.Linear(3, 2)
    opt = run.optimizer_factory.bind(model)()
    assert isinstance(opt, LARS) and opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_steps_per_epoch_match_real_samplers_and_loaders(pad, drop_last):
    """Batch.steps_per_epoch against DistributedSampler + DataLoader, and min_samples is the
    smallest sample count with one optimizer step."""
    from torch.utils.data import DataLoader, DistributedSampler

    from ds_twophase.config import Batch

    for world, micro, gas in [(1, 4, 1), (2, 3, 2), (3, 2, 3)]:
        batch = Batch(micro * gas * world, micro, gas, world)
        steps = []
        for n in range(1, 60):
            data = list(range(n))
            sampler = DistributedSampler(data, num_replicas=world, rank=0, drop_last=not pad)
            loader = DataLoader(data, sampler=sampler, batch_size=micro, drop_last=drop_last)
            real = len(loader) // gas
            assert batch.steps_per_epoch(n, pad=pad, drop_last=drop_last) == real, (n, batch)
            steps.append(real)
        first = next(n for n, s in enumerate(steps, start=1) if s >= 1)
        assert batch.min_samples(pad=pad, drop_last=drop_last) == first
        with pytest.raises(ConfigError, match="trainer.dataset.train_size: .* at least"):
            batch.require_steps(
                first - 1, pad=pad, drop_last=drop_last, key="trainer.dataset.train_size"
            )


def test_the_key_checker_names_what_is_allowed_even_nothing():
    from ds_twophase.errors import unknown_keys

    found = [str(p) for p in unknown_keys(["wdith", "size"], ["width"], owner="model 'm'")]
    assert found == [
        "wdith: unknown key for model 'm' (did you mean 'width'?); allowed: width",
        "size: unknown key for model 'm'; allowed: width",
    ]
    assert [str(p) for p in unknown_keys(["x"], [])] == ["x: unknown key; allowed: none"]
