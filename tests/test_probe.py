"""ProbeConfig validation, probe-sample selection, and single-process measure_hmax."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ds_twophase.faults import PROBE_FAIL_ENV as FAULT_ENV
from ds_twophase.probe import (
    ProbeConfig,
    check_probe_model,
    measure_hmax,
    principal_eigenvalue,
    select_probe_indices,
)

CE = nn.CrossEntropyLoss()


# ---------------------------------------------------------------------------------------------
# ProbeConfig


def test_defaults_are_valid_and_documented():
    cfg = ProbeConfig()
    assert (cfg.layer, cfg.mode, cfg.method, cfg.bn_mode) == ("auto", "rank0", "exact", "eval")
    assert (cfg.max_iters, cfg.tol, cfg.redraw, cfg.seed) == (20, 1e-3, False, None)
    assert cfg.batch_size is None and cfg.micro_batch_size is None


def test_accepts_every_legal_value():
    cfg = ProbeConfig(
        layer=["layer3.2.conv2", "linear"],
        mode="sharded",
        batch_size=512,
        micro_batch_size=128,
        max_iters=5,
        tol=0,
        method="finite_difference",
        bn_mode="train",
        redraw=True,
        seed=7,
        max_graph_mb=None,
    )
    assert cfg.layer == ["layer3.2.conv2", "linear"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("layer", "", "layer:"),
        ("layer", [], "layer:"),
        ("layer", ["fc", 3], "layer:"),
        ("layer", 5, "layer:"),
        ("mode", "rank1", "mode: must be 'rank0' or 'sharded'"),
        ("method", "lanczos", "method: must be 'exact' or 'finite_difference'"),
        ("bn_mode", "frozen", "bn_mode: must be 'eval' or 'train'"),
        ("batch_size", 0, "batch_size: must be an integer >= 1 or null"),
        ("batch_size", 2.5, "batch_size:"),
        ("micro_batch_size", True, "micro_batch_size:"),
        ("max_iters", 0, "max_iters: must be an integer >= 1"),
        ("max_iters", None, "max_iters:"),
        ("tol", -1e-3, "tol: must be a number >= 0"),
        ("tol", float("nan"), "tol:"),
        ("tol", "1e-3", "tol:"),
        ("redraw", 1, "redraw: must be true or false"),
        ("warm_start", "yes", "warm_start: must be true or false"),
        ("seed", -1, "seed: must be an integer >= 0 or null"),
        ("max_graph_mb", -5, "max_graph_mb:"),
    ],
)
def test_invalid_values_name_the_field_in_one_line(field, value, expected):
    with pytest.raises(ValueError) as err:
        ProbeConfig(**{field: value})
    msg = str(err.value)
    assert msg.startswith(f"{field}: ") and expected in msg and "\n" not in msg


def test_from_dict_rejects_unknown_keys_with_a_hint():
    assert ProbeConfig.from_dict({"mode": "sharded"}).mode == "sharded"
    with pytest.raises(
        ValueError, match=r"^moed: unknown key \(did you mean 'mode'\?\); allowed: "
    ):
        ProbeConfig.from_dict({"moed": "sharded"})


# ---------------------------------------------------------------------------------------------
# select_probe_indices


def test_indices_are_deterministic_distinct_sorted_and_in_range():
    a = select_probe_indices(1000, 100, seed=3)
    assert a == select_probe_indices(1000, 100, seed=3)
    assert len(set(a)) == 100 and a == sorted(a) and 0 <= a[0] and a[-1] < 1000
    assert all(isinstance(i, int) for i in a)


def test_seed_and_draw_change_the_set_and_size_is_capped():
    a = select_probe_indices(1000, 100, seed=3)
    assert select_probe_indices(1000, 100, seed=4) != a
    assert select_probe_indices(1000, 100, seed=3, draw=1) != a
    assert select_probe_indices(10, 50, seed=0) == list(range(10))


def test_indices_do_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    select_probe_indices(100, 10, seed=1)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0, "size": 1, "seed": 0}, "num_samples"),
        ({"num_samples": 5, "size": 0, "seed": 0}, "size"),
        ({"num_samples": 5, "size": 1, "seed": -1}, "seed"),
        ({"num_samples": 5, "size": 1, "seed": 0, "draw": -2}, "draw"),
    ],
)
def test_indices_validate_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        select_probe_indices(**kwargs)


# ---------------------------------------------------------------------------------------------
# measure_hmax in one process


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 16, 4),
    )
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(
        torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 4, (64,), generator=g)
    )
    return model, ds


@pytest.mark.parametrize("mode", ["rank0", "sharded"])
def test_measure_hmax_equals_principal_eigenvalue_on_the_same_samples(mode):
    model, ds = setup()
    indices = select_probe_indices(len(ds), 40, seed=2)
    cfg = ProbeConfig(mode=mode, micro_batch_size=16, max_iters=15, tol=0, seed=2)
    out = measure_hmax(model, CE, ds, indices, cfg, device="cpu")
    x, y = ds.tensors[0][indices], ds.tensors[1][indices]
    ref = principal_eigenvalue(
        model,
        CE,
        [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])],
        seed=2,
        max_iters=15,
        tol=0,
    )
    assert out.ok and out.error is None
    assert out.value == pytest.approx(ref.value, rel=1e-6)
    assert out.layer == ref.layer == ["4"] and out.iterations == 15 and out.num_samples == 40
    assert out.seconds > 0


def test_measure_hmax_keeps_global_rng_untouched():
    model, ds = setup()
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    measure_hmax(model, CE, ds, [1, 2, 3], ProbeConfig(micro_batch_size=2, seed=5), device="cpu")
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


@pytest.mark.parametrize("mode", ["rank0", "sharded"])
def test_failure_is_reported_not_raised(mode):
    model, ds = setup()

    def fail(rank, iteration):
        if iteration == 2:
            raise RuntimeError("disk on fire")

    cfg = ProbeConfig(mode=mode, micro_batch_size=8, seed=0)
    out = measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu", fail_hook=fail)
    assert not out.ok and math.isnan(out.value)
    assert out.error == "rank 0: RuntimeError: disk on fire"


def test_env_injection_raises_and_poisons(monkeypatch):
    model, ds = setup()
    cfg = ProbeConfig(micro_batch_size=8, seed=0)
    monkeypatch.setenv(FAULT_ENV, "rank0@1")
    out = measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu")
    assert "injected probe failure" in out.error and math.isnan(out.value)
    monkeypatch.setenv(FAULT_ENV, "rank1")  # rank 1 does not exist here: no effect
    assert measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu").ok
    monkeypatch.setenv(FAULT_ENV, "nan")
    out = measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu")
    assert math.isnan(out.value) and "non-finite" in out.error and out.iterations == 1
    monkeypatch.setenv(FAULT_ENV, "sometimes")
    with pytest.raises(ValueError, match=FAULT_ENV):
        measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu")


def test_a_bad_layer_name_is_reported_as_the_error():
    model, ds = setup()
    out = measure_hmax(
        model, CE, ds, [0, 1], ProbeConfig(layer="fc", micro_batch_size=2), device="cpu"
    )
    assert "unknown probe layer 'fc'" in out.error


def test_rank0_mode_is_refused_under_zero3():
    model, ds = setup()
    with pytest.raises(ValueError, match="sharded"):
        measure_hmax(
            model, CE, ds, [0], ProbeConfig(micro_batch_size=1), device="cpu", zero_stage=3
        )


def test_train_mode_syncbatchnorm_is_refused_in_rank0_mode_in_one_line():
    # Only rank 0 runs the forward in "rank0" mode, and SyncBatchNorm in train mode all-reduces
    # its batch statistics in every forward: the other ranks would never join (a hang).
    model, ds = setup()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    cfg = ProbeConfig(micro_batch_size=8, bn_mode="train")
    problem = check_probe_model(model, cfg)
    assert problem is not None and "\n" not in str(problem)
    assert problem.key == "scheduler.params.probe.bn_mode" and '"eval"' in problem.problem
    with pytest.raises(ValueError, match="scheduler.params.probe.bn_mode"):
        measure_hmax(model, CE, ds, list(range(16)), cfg, device="cpu")
    # Allowed: running statistics (no collective), sharded mode, or plain BatchNorm.
    assert check_probe_model(model, ProbeConfig(micro_batch_size=8)) is None
    assert check_probe_model(model, ProbeConfig(bn_mode="train", mode="sharded")) is None
    assert check_probe_model(setup()[0], cfg) is None
    assert measure_hmax(
        model, CE, ds, list(range(16)), ProbeConfig(micro_batch_size=8), device="cpu"
    ).ok


def test_initialize_refuses_train_mode_syncbatchnorm_as_a_config_error():
    # ds_twophase.initialize and the trainer (both through initialize_run) check the model
    # they are given before DeepSpeed sees it: one keyed line, exit 2, instead of a hang.
    from pathlib import Path

    from ds_twophase.config import load_config, validate_config
    from ds_twophase.engine import initialize_run
    from ds_twophase.errors import ConfigError

    raw = load_config(Path(__file__).parents[1] / "ds_twophase/defaults/mnist1d.json")
    raw["scheduler"]["params"]["probe"]["bn_mode"] = "train"
    run = validate_config(raw, world_size=1)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(setup()[0])
    with pytest.raises(ConfigError) as info:
        initialize_run(run, model=model)
    assert info.value.key == "scheduler.params.probe.bn_mode"
    assert len(info.value.messages) == 1 and "SyncBatchNorm" in info.value.messages[0]


def test_micro_batch_size_must_be_filled():
    model, ds = setup()
    with pytest.raises(ValueError, match="micro_batch_size"):
        measure_hmax(model, CE, ds, [0], ProbeConfig(), device="cpu")
