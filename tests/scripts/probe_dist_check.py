"""Run under the deepspeed launcher (2 ranks): the probe's rank0 and sharded modes on a real engine.

Every rank prints one line ``PROBE_DIST_RESULT <json>`` with the outcomes of a sequence of probes:
both modes and both BatchNorm modes, injected failures (rank 0, rank 1 during setup and in the
middle of the power iteration, a data-loading failure on rank 1), NaN losses, a final probe
showing the collectives are still in step after all the failures, and the sharded probe on a
ZeRO-3 engine. The test compares the lines.
"""

import copy
import dataclasses
import json
import os

import deepspeed
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ds_twophase import dist
from ds_twophase.dist import exit_process
from ds_twophase.faults import PROBE_FAIL_ENV as FAULT_ENV
from ds_twophase.probe import ProbeConfig, measure_hmax, principal_eigenvalue, select_probe_indices

CE = nn.CrossEntropyLoss()


class FlakyOnRank1(TensorDataset):
    """Loading fails on rank 1 only (before the probe's first HVP collective)."""

    def __getitem__(self, i):
        if dist.get_rank() == 1:
            raise OSError(f"unreadable sample {i}")
        return super().__getitem__(i)


def zero3_checks(initial: nn.Module, ds: TensorDataset, indices: list[int]) -> dict:
    """Sharded probe on a ZeRO-3 engine (partitioned parameters) against the unpartitioned model;
    rank0 mode refused; the engine still trains afterwards."""
    config = {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 8,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
    }
    reference = copy.deepcopy(initial)
    model = copy.deepcopy(initial)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    x, y = ds.tensors[0][indices], ds.tensors[1][indices]
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(indices), 8)]
    ref = principal_eigenvalue(reference, CE, batches, seed=3, max_iters=12, tol=0)
    cfg = ProbeConfig(mode="sharded", micro_batch_size=8, max_iters=12, tol=0, seed=3)
    out = measure_hmax(engine.module, CE, ds, indices, cfg, device="cpu", zero_stage=3)
    partitioned = all(p.numel() == 0 for p in engine.module.parameters())
    try:
        rank0 = ProbeConfig(micro_batch_size=8)
        measure_hmax(engine.module, CE, ds, indices, rank0, device="cpu", zero_stage=3)
        refused = ""
    except ValueError as e:
        refused = str(e)
    loss = CE(engine(x[:8]), y[:8])
    engine.backward(loss)
    engine.step()
    return {
        "zero3_ref": ref.value,
        "zero3_sharded": dataclasses.asdict(dataclasses.replace(out, vector=None)),
        "zero3_partitioned_after": partitioned,
        "zero3_rank0_refused": refused,
        "zero3_trains_after": bool(torch.isfinite(loss)),
    }


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    config = {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 8,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "zero_optimization": {"stage": 1},
        "zero_allow_untested_optimizer": True,
    }
    initial = copy.deepcopy(model)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 6, 6, generator=g), torch.randint(0, 4, (64,), generator=g)
    ds = TensorDataset(x, y)
    # One real training step so running stats and .grad are what an epoch end sees; the ranks'
    # BatchNorm running statistics now differ (data parallelism does not synchronise them).
    rank = dist.get_rank()
    loss = CE(engine(x[rank * 8 : rank * 8 + 8]), y[rank * 8 : rank * 8 + 8])
    engine.backward(loss)
    engine.step()
    module = engine.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    grads_before = [None if p.grad is None else p.grad.clone() for p in module.parameters()]

    indices = select_probe_indices(len(ds), 44, seed=3)  # 6 micro-batches of 8 (last: 4)
    cfg = ProbeConfig(micro_batch_size=8, max_iters=12, tol=0, seed=3)
    sel_x, sel_y = x[indices], y[indices]
    batches = [(sel_x[i : i + 8], sel_y[i : i + 8]) for i in range(0, 44, 8)]
    # The single-process reference on this rank's own model (the test uses rank 0's).
    ref = principal_eigenvalue(module, CE, batches, seed=3, max_iters=12, tol=0)
    ref_train = principal_eigenvalue(
        module, CE, batches, seed=3, max_iters=12, tol=0, bn_mode="train"
    )

    # Finite differences are only as good as the gradients' precision (and ReLU kinks make fp32
    # difference quotients jump), so that method is compared in float64.
    module64 = copy.deepcopy(module).double()
    batches64 = [(bx.double(), by) for bx, by in batches]
    ref64 = principal_eigenvalue(module64, CE, batches64, seed=3, max_iters=12, tol=0)

    vectors = {}

    def probe(mode: str, dataset=ds, model=module, v0=None, **changes) -> dict:
        cfg_mode = dataclasses.replace(cfg, mode=mode, **changes)
        out = measure_hmax(model, CE, dataset, indices, cfg_mode, device="cpu", v0=v0)
        vector = vectors[mode] = out.vector
        out.vector = None
        # The vector stays where it was computed; its checksum lets the test compare ranks.
        return dict(
            dataclasses.asdict(out),
            vector=None if vector is None else [float(vector.norm()), float(vector.sum())],
        )

    def injected(spec: str, mode: str) -> dict:
        os.environ[FAULT_ENV] = spec
        try:
            return probe(mode)
        finally:
            del os.environ[FAULT_ENV]

    results = {
        "rank": rank,
        "ref": ref.value,
        "ref_train": ref_train.value,
        "ref_errors": [ref.hmax_se, ref.loss, ref.loss_se],
        "ref_train_errors": [ref_train.hmax_se, ref_train.loss, ref_train.loss_se],
        "rank0": probe("rank0"),
        "sharded": probe("sharded"),
        "rank0_train": probe("rank0", bn_mode="train"),
        "sharded_train": probe("sharded", bn_mode="train"),
        "ref64": ref64.value,
        "sharded_fd64": probe("sharded", model=module64, method="finite_difference"),
        "rank0_fail": injected("rank0", "rank0"),
        "sharded_rank1_setup": injected("rank1", "sharded"),
        "sharded_rank1_iter3": injected("rank1@3", "sharded"),
        "sharded_all_iter2": injected("all@2", "sharded"),
        "rank0_nan": injected("nan", "rank0"),
        "sharded_nan": injected("nan", "sharded"),
        "sharded_load_fail": probe("sharded", dataset=FlakyOnRank1(x, y)),
        "after": probe("sharded"),
    }
    # Warm starts: sharded ranks must all pass the same vector (the last sharded result's is).
    results["sharded_warm"] = probe("sharded", v0=vectors["sharded"], tol=1e-6)
    results["rank0_warm"] = probe("rank0", v0=ref.vector, tol=1e-6)
    grads_after = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    results["unchanged"] = all(
        torch.equal(v, module.state_dict()[k]) for k, v in before.items()
    ) and all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(grads_before, grads_after, strict=True)
    )
    results.update(zero3_checks(initial, ds, indices))
    print("PROBE_DIST_RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
