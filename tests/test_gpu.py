"""The GPU path (marker ``gpu``; every test skips cleanly without CUDA).

None of these has run yet: no GPU was available to this project. ``bench/gpu_check.sh`` runs
them, with the benches, on a machine that has one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/tiny/mnist1d_2rank.json"


def lars_params(model: nn.Module) -> list[dict]:
    from ds_twophase.optim import lars_param_groups

    return lars_param_groups(model, weight_decay=5e-4)


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float32, 1e-4, 1e-5), (torch.bfloat16, 3e-2, 3e-2)]
)
def test_lars_cuda_matches_cpu_over_50_steps(dtype, rtol, atol, monkeypatch):
    """ResNet-20's parameter set, the same gradients on both devices, 50 steps; on CUDA the
    step is the multi-tensor path that ends in ``torch._fused_sgd_``."""
    # imported here, so that a CPU-only run only collects and skips
    from ds_twophase.models.cifar_resnet import resnet20
    from ds_twophase.optim import LARS

    torch.manual_seed(0)
    cpu_model = resnet20(num_classes=10).to(dtype)
    gpu_model = resnet20(num_classes=10).to(dtype).cuda()
    gpu_model.load_state_dict(cpu_model.state_dict())
    kwargs = {"lr": 2.0, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 0.01}
    cpu_opt = LARS(lars_params(cpu_model), **kwargs)
    gpu_opt = LARS(lars_params(gpu_model), **kwargs)
    calls = []
    fused = torch._fused_sgd_

    def counting_fused_sgd(params, *args, **kw):
        calls.append(params[0].device.type)
        return fused(params, *args, **kw)

    monkeypatch.setattr(torch, "_fused_sgd_", counting_fused_sgd)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
            g = (torch.randn(p.shape, generator=gen) * 0.01).to(dtype)
            p.grad = g
            q.grad = g.cuda()
        cpu_opt.step()
        gpu_opt.step()
    assert "cuda" in calls
    for (name, p), q in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(q.cpu(), p, rtol=rtol, atol=atol, msg=name)


def test_probe_cuda_equals_cpu_for_the_same_weights_and_batch():
    from ds_twophase.models.cifar_resnet import resnet20
    from ds_twophase.probe import ProbeConfig, measure_hmax

    torch.manual_seed(0)
    model = resnet20(num_classes=10)
    model.train()
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(x)
    data = TensorDataset(x, y)
    cfg = ProbeConfig(micro_batch_size=32, max_iters=60, tol=1e-6, seed=0, warm_start=False)
    loss = nn.CrossEntropyLoss()
    cpu = measure_hmax(model, loss, data, list(range(64)), cfg, device="cpu")
    gpu_model = resnet20(num_classes=10).cuda()
    gpu_model.load_state_dict(model.state_dict())
    gpu = measure_hmax(gpu_model, loss, data, list(range(64)), cfg, device="cuda")
    assert cpu.error is None and gpu.error is None, (cpu, gpu)
    assert gpu.value == pytest.approx(cpu.value, rel=1e-3)


@pytest.mark.timeout(600)
def test_trainer_on_one_gpu(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [REPO, env.get("PYTHONPATH", "")] if p)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    cmd = [sys.executable, "-m", "ds_twophase.train", "--config", TINY]
    done = subprocess.run(
        cmd + ["--set", f"trainer.output_dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 15))
    assert any(r["decision"] == "switch" for r in rows)
    assert all(r["hmax"] is None or r["hmax"] > 0 for r in rows)
    assert "final test accuracy" in done.stdout


@pytest.mark.multiproc
@pytest.mark.timeout(240)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sharded_probe_over_nccl():
    """The distributed probe checks of test_probe_dist (rank0 and sharded modes, failures on one
    rank, ZeRO-3) with two GPU ranks, where DeepSpeed's backend is NCCL."""
    from test_probe_dist import test_rank0_and_sharded_agree_and_failures_reach_every_rank

    test_rank0_and_sharded_agree_and_failures_reach_every_rank()
