"""Normalised margins: closed form for a linear model, batched = one sample at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _launch import REPO
from torch import nn

from ds_twophase.analysis.margins import all_margins, margin_summary, normalised_margins, summarise


def closed_form(linear: nn.Linear, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor):
    w, b = linear.weight.detach(), linear.bias.detach()
    dw = w[i] - w[j]
    return ((dw * x).sum(1) + b[i] - b[j]) / dw.norm(dim=1)


def test_linear_model_margin_is_the_distance_to_the_boundary():
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    x = torch.randn(64, 6)
    logits = model(x).detach()
    top = logits.topk(2, dim=1).indices
    expected = closed_form(model, x, top[:, 0], top[:, 1])
    got = normalised_margins(model, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got >= 0).all()
    # classes="label": i = label, j = best other class; negative when the label is not the top
    labels = torch.randint(0, 5, (64,))
    others = logits.scatter(1, labels[:, None], float("-inf")).argmax(1)
    got = normalised_margins(model, x, labels, classes="label")
    torch.testing.assert_close(got, closed_form(model, x, labels, others), rtol=1e-5, atol=1e-6)
    assert ((got < 0) == (logits.argmax(1) != labels)).all()
    # the point x - d * (w_i - w_j)/||w_i - w_j|| lies on the boundary: f_i = f_j there
    i, j = top[0, 0], top[0, 1]
    direction = (model.weight[i] - model.weight[j]).detach()
    on_boundary = x[0] - normalised_margins(model, x[:1])[0] * direction / direction.norm()
    out = model(on_boundary).detach()
    assert out[i] == pytest.approx(out[j].item(), abs=1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


def test_batched_gradients_equal_one_sample_at_a_time():
    torch.manual_seed(1)
    model = Net()
    model.train()
    model(torch.randn(32, 8))  # give BatchNorm running statistics that are not the defaults
    data = [(torch.randn(8), torch.tensor(k % 4)) for k in range(50)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batched = all_margins(model, data, "cpu", batch_size=16)
    model.eval()
    single = torch.cat([normalised_margins(model, x[None]) for x, _ in data])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    model.train()
    all_margins(model, data, "cpu", batch_size=16)
    # the model is left as found: train mode, same buffers, no parameter gradients
    assert model.training and model.body[1].training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_summary_quartiles():
    s = summarise(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("inf")]))
    assert (s["margin_q1"], s["margin_median"], s["margin_q3"]) == (2.0, 3.0, 4.0)
    assert s["margin_iqr"] == 2.0 and s["margin_iq_mean"] == 3.0
    model = nn.Linear(3, 2)
    full = margin_summary(model, [(torch.randn(3), torch.tensor(0)) for _ in range(10)], "cpu", 4)
    assert full["margin_samples"] == 10 and full["margin_seconds"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_commands_on_a_real_run(tmp_path):
    """Train a tiny MNIST-1D run, then plot, report and margins on its output directory."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "run"

    def cli(*args):
        cmd = [sys.executable, "-m", "ds_twophase.cli", *args]
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)

    train = [
        "train",
        "--config",
        "configs/tiny/mnist1d_2rank.json",
        "--set",
        f"trainer.output_dir={out}",
        "--set",
        "trainer.epochs=3",
    ]
    done = cli(*train)
    assert done.returncode == 0, done.stderr[-2000:]
    margins = cli("margins", str(out), "--json")
    assert margins.returncode == 0, margins.stderr[-2000:]
    summary = json.loads(margins.stdout.strip().splitlines()[-1])
    assert summary["margin_samples"] == 1000 and summary["margin_q3"] >= summary["margin_q1"] > 0
    ckpt = out / "checkpoints" / "epoch0003"
    same = json.loads(cli("margins", str(ckpt), "--json").stdout.strip().splitlines()[-1])
    assert same["margin_median"] == summary["margin_median"]
    report = cli("report", str(out))
    assert report.returncode == 0 and "SGD + TwoPhaseLR" in report.stdout
    pytest.importorskip("matplotlib")
    plot = cli("plot", str(out), "-o", str(tmp_path / "run.png"))
    assert plot.returncode == 0 and (tmp_path / "run.png").stat().st_size > 1000
