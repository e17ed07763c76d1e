"""The probe's standard errors and its probe-batch loss (issue 21, part 1 and 3).

hmax_se is checked on operators whose spectrum is known sample by sample, and for calibration
against the spread of hmax over many independent probe batches; probe_loss against a direct
evaluation of the probe batch at the probe's weights in both BatchNorm modes.
"""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
from torch import nn

from ds_twophase.probe import ProbeConfig, measure_hmax, principal_eigenvalue
from ds_twophase.probe.hessian import reading_of

CE = nn.CrossEntropyLoss()


class Scale(nn.Module):
    """``out = x * w``: with ``loss = mean_i 0.5 * sum_k out_ik**2`` sample i's Hessian in ``w``
    is ``diag(x_i**2)``, whatever ``w`` is."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Project(nn.Module):
    """``out = x @ w``: with ``loss = mean_i 0.5 * out_i**2`` sample i's Hessian is
    ``x_i x_i^T`` (rank one; the eigenvector of the mean wobbles from batch to batch)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def half_square(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * out.pow(2).reshape(out.shape[0], -1).sum(dim=1).mean()


SPECTRUM = torch.tensor([10.0, 3.0, 2.0, 1.0, 1.0, 0.5], dtype=torch.float64)
"""The population Hessian's eigenvalues (``E[x x^T] = diag(SPECTRUM)``); a wide top gap."""


def draw(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(SPECTRUM), generator=g, dtype=torch.float64) * SPECTRUM.sqrt()


def probe(model: nn.Module, x: torch.Tensor, micro: int = 16, **kw):
    batches = [
        (x[i : i + micro], torch.zeros(len(x[i : i + micro]))) for i in range(0, len(x), micro)
    ]
    kw.setdefault("max_iters", len(SPECTRUM))
    kw.setdefault("tol", 0)
    return principal_eigenvalue(nn.Sequential(model), half_square, batches, "0", **kw)


def test_hmax_se_on_a_diagonal_operator_is_the_top_coordinates_standard_error():
    x = draw(64, seed=0)
    res = probe(Scale(len(SPECTRUM)), x)
    q = (x[:, 0] ** 2).tolist()  # x^T H_i x along the top eigenvector e_1
    assert res.value == pytest.approx(statistics.fmean(q), rel=1e-10)
    assert res.hmax_se == pytest.approx(statistics.stdev(q) / math.sqrt(len(q)), rel=1e-8)


def test_hmax_se_matches_the_spread_of_hmax_over_independent_probe_batches():
    # 300 probe batches of 48 samples from the same population: the reported standard error
    # (first order in the eigenvector's wobble) against the observed std of hmax.
    model = Project(len(SPECTRUM))
    values, errors = [], []
    for seed in range(300):
        res = probe(model, draw(48, seed=1000 + seed))
        values.append(res.value)
        errors.append(res.hmax_se)
    spread = statistics.stdev(values)
    typical = math.sqrt(statistics.fmean(e * e for e in errors))
    assert 0.85 < typical / spread < 1.15, (typical, spread)
    # and it is not a constant: batches with more spread report more
    assert statistics.stdev(errors) > 0.05 * typical


def test_one_sample_leaves_the_standard_errors_unknown():
    res = probe(Scale(len(SPECTRUM)), draw(1, seed=3), micro=1)
    assert math.isfinite(res.value) and math.isfinite(res.loss)
    assert math.isnan(res.hmax_se) and math.isnan(res.loss_se)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def bn_net() -> nn.Module:
    torch.manual_seed(4)
    model = BNNet().double()
    with torch.no_grad():  # running statistics that differ from any batch's
        for _ in range(3):
            model(torch.randn(32, 5, dtype=torch.float64) * 2 + 1)
    return model


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_probe_loss_equals_a_direct_evaluation_of_the_probe_batch(bn_mode):
    model = bn_net()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(21, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (21,), generator=g)
    micro = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]  # 8, 8, 5 samples
    before = copy.deepcopy(model.state_dict())
    res = principal_eigenvalue(model, CE, micro, "fc2", bn_mode=bn_mode, max_iters=5)
    # direct: no dropout; BatchNorm with running statistics or each micro-batch's own
    direct = copy.deepcopy(model).eval()
    if bn_mode == "train":
        direct.bn.train()
    with torch.no_grad():
        per_sample = torch.cat(
            [nn.functional.cross_entropy(direct(a), b, reduction="none") for a, b in micro]
        )
    losses = per_sample.tolist()
    assert res.loss == pytest.approx(statistics.fmean(losses), rel=1e-12)
    assert res.loss_se == pytest.approx(statistics.stdev(losses) / math.sqrt(21), rel=1e-9)
    assert math.isfinite(res.hmax_se) and res.hmax_se > 0
    for k, v in model.state_dict().items():  # the extra pass leaves the model as found
        assert torch.equal(v, before[k]), k


def test_measure_hmax_and_the_schedule_reading_carry_the_loss_and_standard_errors():
    model = bn_net()
    g = torch.Generator().manual_seed(6)
    ds = torch.utils.data.TensorDataset(
        torch.randn(40, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=g),
    )
    cfg = ProbeConfig(micro_batch_size=8, max_iters=5, seed=1, layer="fc2")
    out = measure_hmax(model, CE, ds, list(range(24)), cfg, device="cpu")
    assert out.ok and out.loss > 0 and out.loss_se > 0 and out.hmax_se > 0
    reading = reading_of(out)
    assert (reading.hmax, reading.hmax_se, reading.loss, reading.loss_se) == (
        out.value,
        out.hmax_se,
        out.loss,
        out.loss_se,
    )
    out.hmax_se = math.nan
    assert reading_of(out).hmax_se is None  # unknown, not NaN, in the decision record


def test_a_loss_that_cannot_be_taken_per_sample_leaves_hmax_and_only_loses_its_errors():
    model = bn_net()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)

    def data_dependent(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if float(out.detach().abs().sum()) >= 0 else 2.0  # no vmap through float()
        return CE(out, targets) * scale

    plain = principal_eigenvalue(model, CE, [(x, y)], "fc2", max_iters=5)
    res = principal_eigenvalue(model, data_dependent, [(x, y)], "fc2", max_iters=5)
    assert res.value == plain.value
    assert math.isnan(res.hmax_se) and math.isnan(res.loss) and math.isnan(res.loss_se)
