"""principal_eigenvalue against dense Hessians, layer choice, and the no-side-effect promise."""

from __future__ import annotations

import contextlib
import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ds_twophase.probe import (
    lanczos,
    parametric_modules,
    principal_eigenvalue,
    resolve_layer,
    start_vector,
)
from ds_twophase.probe.functional import InferenceBatchNormAsAffine
from ds_twophase.probe.memory import peak_bytes

CE = nn.CrossEntropyLoss()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, pooling, a classifier; dropout so mode handling matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def small_cnn(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(1)
    model = SmallCNN().to(dtype)
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 3, 6, 6, dtype=dtype) * 2 + 0.5)
    return model


def data(n: int, shape: tuple[int, ...], classes: int, dtype=torch.float64, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(
        0, classes, (n,), generator=g
    )


def dense_hessian_eigs(model, x, y, names, bn_train=False) -> torch.Tensor:
    return torch.linalg.eigvalsh(dense_hessian(model, x, y, names, bn_train))


def dense_hessian(model, x, y, names, bn_train=False) -> torch.Tensor:
    """The symmetrised dense Hessian of the mean loss w.r.t. the named modules' parameters."""
    """Eigenvalues of the dense Hessian of the mean loss w.r.t. the named modules' params."""
    model = copy.deepcopy(model).eval()
    if bn_train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    mods = dict(model.named_modules())
    wanted = {id(p) for n in names for p in mods[n].parameters()}
    pnames = [n for n, p in model.named_parameters() if id(p) in wanted]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in pnames]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in pnames])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = flat.split([s.numel() for s in shapes])
        subst = {n: c.view(s) for n, c, s in zip(pnames, chunks, shapes, strict=True)}
        return CE(functional_call(model, subst, (x,)), y)

    h = torch.autograd.functional.hessian(loss, flat0)
    return (h + h.T) / 2


def largest_magnitude(eigs: torch.Tensor) -> float:
    return float(eigs[eigs.abs().argmax()])


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------------------------
# Ground truth


def test_exact_matches_dense_hessian_mlp_with_unequal_microbatches():
    model = mlp()
    x, y = data(40, (6,), 4)
    batches = [(x[:7], y[:7]), (x[7:30], y[7:30]), (x[30:], y[30:])]
    res = principal_eigenvalue(model, CE, batches, "2", max_iters=400, tol=1e-12)
    truth = largest_magnitude(dense_hessian_eigs(model, x, y, ["2"]))
    assert rel(res.value, truth) < 1e-6
    assert res.layer == ["2"] and res.num_params == 36 and res.num_samples == 40
    assert res.converged and res.iterations < 400


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_exact_matches_dense_hessian_cnn_with_batchnorm(bn_mode):
    model = small_cnn()
    x, y = data(24, (3, 6, 6), 3)
    res = principal_eigenvalue(
        model, CE, [(x, y)], "auto", max_iters=500, tol=1e-12, bn_mode=bn_mode
    )
    assert res.layer == ["conv2"]
    eigs = dense_hessian_eigs(model, x, y, ["conv2"], bn_train=bn_mode == "train")
    assert rel(res.value, largest_magnitude(eigs)) < 1e-9


def test_finite_difference_matches_dense_hessian():
    model = mlp()
    x, y = data(40, (6,), 4)
    truth = largest_magnitude(dense_hessian_eigs(model, x, y, ["2"]))
    res64 = principal_eigenvalue(
        model, CE, [(x, y)], "2", max_iters=300, tol=1e-10, method="finite_difference"
    )
    assert rel(res64.value, truth) < 1e-5
    model32, x32 = model.float(), x.float()
    res32 = principal_eigenvalue(
        model32, CE, [(x32, y)], "2", max_iters=300, tol=1e-8, method="finite_difference"
    )
    assert rel(res32.value, truth) < 2e-2


def test_microbatch_split_does_not_change_eval_answer():
    model = small_cnn(torch.float32)
    x, y = data(30, (3, 6, 6), 3, dtype=torch.float32)
    whole = principal_eigenvalue(model, CE, [(x, y)], max_iters=30, tol=0)
    split = principal_eigenvalue(
        model, CE, [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])], max_iters=30, tol=0
    )
    assert rel(split.value, whole.value) < 1e-5
    assert split.iterations == whole.iterations == 30


@pytest.mark.parametrize("budget", [0, 1])
def test_graph_budget_recomputes_with_same_answer(budget):
    model = small_cnn(torch.float64)
    x, y = data(30, (3, 6, 6), 3)
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]
    kept = principal_eigenvalue(model, CE, batches, max_iters=15, tol=0, max_graph_bytes=None)
    # budget 1 byte keeps nothing; 0 likewise: every micro-batch is recomputed per iteration
    spilled = principal_eigenvalue(model, CE, batches, max_iters=15, tol=0, max_graph_bytes=budget)
    assert rel(spilled.value, kept.value) < 1e-10


def test_lanczos_is_exact_once_the_krylov_space_spans_the_block():
    # 36 parameters: at most 36 HVPs reach an invariant subspace, where the value is exact.
    model = mlp()
    x, y = data(40, (6,), 4)
    res = principal_eigenvalue(model, CE, [(x, y)], "2", max_iters=36, tol=0)
    truth = largest_magnitude(dense_hessian_eigs(model, x, y, ["2"]))
    assert rel(res.value, truth) < 1e-10
    assert res.iterations <= 36


@pytest.mark.parametrize("steps", [2, 3, 5, 8])
def test_lanczos_is_never_worse_than_power_iteration_for_the_same_hvps(steps):
    # The paper's power iteration from the same start vector, on the dense Hessian: its
    # Rayleigh quotient after `steps` HVPs lies in the Krylov space Lanczos optimises over.
    model = small_cnn()
    x, y = data(24, (3, 6, 6), 3)
    h = dense_hessian(model, x, y, ["conv2"])
    evals = torch.linalg.eigvalsh(h)
    truth = largest_magnitude(evals)
    assert truth > 0 and abs(truth) > abs(float(evals[0]))  # the positive end dominates
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(7), dtype=h.dtype)
    res = principal_eigenvalue(model, CE, [(x, y)], "conv2", max_iters=steps, tol=0, v0=v)
    v = start_vector(h.shape[0], 0, v)  # the start the probe used: v mixed with the seeded one
    for _ in range(steps - 1):
        v = h @ v
        v = v / v.norm()
    power = float(v @ h @ v)
    assert res.iterations == steps
    assert abs(res.value - truth) <= abs(power - truth) * (1 + 1e-9)
    assert res.value <= truth * (1 + 1e-12)  # a Ritz value never overshoots the top


def test_result_vector_is_the_eigenvector_and_warm_starts_the_next_call():
    model = small_cnn()
    x, y = data(24, (3, 6, 6), 3)
    h = dense_hessian(model, x, y, ["conv2"])
    cold = principal_eigenvalue(model, CE, [(x, y)], "conv2", max_iters=100, tol=1e-10)
    vec = cold.vector.double()
    assert abs(float(vec.norm()) - 1) < 1e-12
    assert float((h @ vec - cold.value * vec).norm()) < 1e-4 * abs(cold.value)
    warm = principal_eigenvalue(model, CE, [(x, y)], "conv2", max_iters=100, tol=1e-10, v0=vec)
    assert rel(warm.value, cold.value) < 1e-9
    assert warm.iterations < cold.iterations and warm.converged


def test_v0_of_the_wrong_size_or_zero_is_refused():
    x, y = data(4, (6,), 4)
    with pytest.raises(ValueError, match="v0 must be a tensor of 36 elements, got 35"):
        principal_eigenvalue(mlp(), CE, [(x, y)], "2", v0=torch.ones(35))
    with pytest.raises(ValueError, match="v0 must be finite and non-zero"):
        principal_eigenvalue(mlp(), CE, [(x, y)], "2", v0=torch.zeros(36))


def test_nan_result_carries_no_vector():
    model = mlp()
    x, y = data(8, (6,), 4)
    res = principal_eigenvalue(model, lambda o, t: CE(o, t) * float("nan"), [(x, y)], "2")
    assert res.value != res.value and res.vector is None


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 7), (5, 3, 4, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_inference_batch_norm_as_affine_has_the_same_values_and_derivatives(shape, affine):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    mean, var = torch.randn(3, generator=g).double(), torch.rand(3, generator=g).double() + 0.1
    w = (torch.randn(3, generator=g).double() if affine else None,)
    b = (torch.randn(3, generator=g).double() if affine else None,)
    params = [t.requires_grad_() for t in (*w, *b) if t is not None]
    probe = torch.randn(shape, generator=g, dtype=torch.float64)

    def grads(use_mode: bool) -> list[torch.Tensor]:
        mode = InferenceBatchNormAsAffine() if use_mode else contextlib.nullcontext()
        with mode:
            out = nn.functional.batch_norm(x, mean, var, w[0], b[0], training=False, eps=1e-3)
        assert ("BatchNorm" in type(out.grad_fn).__name__) is not use_mode  # really replaced
        # second order: the gradient of <out, probe>^2 w.r.t. input and parameters
        first = torch.autograd.grad((out * probe).sum() ** 2, [x, *params], create_graph=True)
        second = torch.autograd.grad(sum(f.sum() for f in first), [x, *params])
        return [out.detach(), *first, *second]

    for a, b_ in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


def test_batch_norm_with_batch_statistics_passes_through():
    x = torch.randn(6, 3, dtype=torch.float64)
    with InferenceBatchNormAsAffine():
        out = nn.functional.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(out, nn.functional.batch_norm(x, None, None, training=True))


def test_tol_and_max_iters_control_the_iteration_count():
    model = mlp()
    x, y = data(40, (6,), 4)
    assert principal_eigenvalue(model, CE, [(x, y)], "2", max_iters=7, tol=0).iterations == 7
    early = principal_eigenvalue(model, CE, [(x, y)], "2", max_iters=500, tol=1e-3)
    assert early.converged and early.iterations < 100


def test_nonfinite_loss_gives_nan_and_stops():
    model = mlp()
    x, y = data(10, (6,), 4)
    res = principal_eigenvalue(
        model, lambda o, t: CE(o, t) * float("nan"), [(x, y)], "2", max_iters=20
    )
    assert res.value != res.value and res.iterations == 1


def test_bf16_model_gives_an_fp32_estimate_close_to_the_fp32_value():
    model = small_cnn(torch.float32)
    x, y = data(32, (3, 6, 6), 3, dtype=torch.float32)
    ref = principal_eigenvalue(model, CE, [(x, y)], max_iters=50, tol=1e-6)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    res = principal_eigenvalue(bf16, CE, [(x.to(torch.bfloat16), y)], max_iters=50, tol=1e-6)
    assert isinstance(res.value, float) and res.value > 0
    assert rel(res.value, ref.value) < 0.05
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_hvp_reduce_hook_sums_processes():
    model = mlp()
    x, y = data(40, (6,), 4)
    plain = principal_eigenvalue(model, CE, [(x, y)], "2", max_iters=10, tol=0)
    calls = []

    def two_identical_ranks(vec, count):
        calls.append(count)
        return vec * 2, count * 2

    hooked = principal_eigenvalue(
        model, CE, [(x, y)], "2", max_iters=10, tol=0, hvp_reduce=two_identical_ranks
    )
    assert rel(hooked.value, plain.value) < 1e-12 and hooked.num_samples == 80
    # one call per HVP, then one for the standard errors' sums (probe/uncertainty.py)
    assert calls == [40.0] * 11
    assert rel(hooked.loss, plain.loss) < 1e-12


def test_hook_is_told_about_a_local_failure_and_nothing_else():
    model = mlp()
    x, y = data(10, (6,), 4)
    seen = []

    def reduce(vec, count):
        seen.append(vec is None)
        if vec is None:
            raise RuntimeError("peer failure")
        return vec, count

    def fail_at_3(k):
        if k == 3:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        principal_eigenvalue(model, CE, [(x, y)], "2", hvp_reduce=reduce, iteration_hook=fail_at_3)
    assert seen == [False, False, True]


# ---------------------------------------------------------------------------------------------
# Layer choice


class ForwardOrder(nn.Module):
    """Registration order differs from forward order; the rule must follow the forward."""

    def __init__(self, head_out: int) -> None:
        super().__init__()
        self.head = nn.Linear(10, head_out)  # registered first, runs last
        self.big = nn.Linear(4, 50)  # the largest, but not among the last three
        self.mid = nn.Linear(50, 10)
        self.norm = nn.LayerNorm(10)  # 20 parameters
        self.proj = nn.Linear(10, 10)  # 110 parameters
        self.unused = nn.Linear(30, 30)  # never runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.norm(self.mid(self.big(x)))))


@pytest.mark.parametrize(
    ("head_out", "expected"),
    [(2, "proj"), (20, "head"), (10, "head")],  # 22 < 110; 220 > 110; 110 == 110: later wins
)
def test_auto_picks_largest_of_last_three_in_forward_order(head_out, expected):
    assert resolve_layer(ForwardOrder(head_out), "auto", torch.randn(3, 4)) == [expected]


def test_auto_tie_goes_to_the_module_nearer_the_output():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    assert resolve_layer(model, "auto", torch.randn(2, 3)) == ["2"]


def test_auto_logs_its_choice(caplog):
    caplog.set_level("INFO", logger="ds_twophase.probe")
    resolve_layer(small_cnn(), "auto", torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert "conv2" in caplog.text and "185 parameters" in caplog.text


def test_names_override_and_lists_combine_blocks():
    model = small_cnn()
    x, y = data(8, (3, 6, 6), 3)
    assert resolve_layer(model, "fc") == ["fc"]
    res = principal_eigenvalue(model, CE, [(x, y)], ["bn2", "fc", "fc"], max_iters=3)
    assert res.layer == ["bn2", "fc"] and res.num_params == 10 + 18


def test_unknown_layer_lists_the_candidates():
    model = small_cnn()
    with pytest.raises(ValueError) as err:
        resolve_layer(model, ["fc", "conv3"])
    msg = str(err.value)
    assert "'conv3'" in msg and "did you mean 'conv2'" in msg
    assert all(n in msg for n in parametric_modules(model)) and "\n" not in msg


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "newton"}, "method"),
        ({"bn_mode": "frozen"}, "bn_mode"),
        ({"max_iters": 0}, "max_iters"),
        ({"tol": -1.0}, "tol"),
        ({"seed": -3}, "seed"),
        ({"max_graph_bytes": -1}, "max_graph_bytes"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, field):
    x, y = data(4, (6,), 4)
    with pytest.raises(ValueError, match=field):
        principal_eigenvalue(mlp(), CE, [(x, y)], "2", **kwargs)


# ---------------------------------------------------------------------------------------------
# No side effects


def snapshot(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "ids": {n: id(p) for n, p in model.named_parameters()},
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state()[1].copy(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), k
        assert after["tensors"][k].dtype == v.dtype, k
    for k, g in before["grads"].items():
        assert (after["grads"][k] is None) == (g is None), k
        assert g is None or torch.equal(after["grads"][k], g), k
    for key in ("requires_grad", "modes", "ids", "py_rng"):
        assert after[key] == before[key], key
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert np.array_equal(after["np_rng"], before["np_rng"])


def prepared_cnn() -> nn.Module:
    """Train mode, a frozen parameter, some .grad set and some None: everything must survive."""
    model = small_cnn(torch.float32).train()
    model.bn1.eval()  # a mixed-mode model
    model.conv1.weight.requires_grad_(False)
    x, y = data(6, (3, 6, 6), 3, dtype=torch.float32, seed=9)
    CE(model(x), y).backward()
    model.bn2.bias.grad = None
    return model


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_probe_leaves_no_trace(bn_mode, method):
    model = prepared_cnn()
    x, y = data(20, (3, 6, 6), 3, dtype=torch.float32)
    torch.manual_seed(5)
    before = snapshot(model)
    res = principal_eigenvalue(
        model, CE, [(x[:10], y[:10]), (x[10:], y[10:])], max_iters=4, bn_mode=bn_mode, method=method
    )
    assert res.value == res.value
    assert_unchanged(model, before)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("fail_at", [0, 2])
def test_probe_leaves_no_trace_after_an_exception(bn_mode, fail_at):
    model = prepared_cnn()
    x, y = data(20, (3, 6, 6), 3, dtype=torch.float32)
    before = snapshot(model)

    def fail(k):
        if k == fail_at:
            torch.rand(3)  # consume RNG before failing: it must be restored anyway
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        principal_eigenvalue(model, CE, [(x, y)], bn_mode=bn_mode, iteration_hook=fail)
    assert_unchanged(model, before)


def test_probe_leaves_no_trace_when_the_loss_raises_mid_forward():
    model = prepared_cnn()
    x, y = data(20, (3, 6, 6), 3, dtype=torch.float32)
    before = snapshot(model)
    calls = []

    def loss(o, t):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("loss broke")
        return CE(o, t)

    with pytest.raises(ValueError, match="loss broke"):
        principal_eigenvalue(model, loss, [(x[:10], y[:10]), (x[10:], y[10:])], bn_mode="train")
    assert_unchanged(model, before)


def test_auto_layer_accepts_inputs_in_another_dtype():
    # float32 data with a float64 (or bf16) model: the order-finding forward casts the inputs
    x32 = torch.randn(2, 3, 6, 6)
    assert resolve_layer(small_cnn(torch.float64), "auto", x32) == ["conv2"]
    assert resolve_layer(small_cnn(torch.float32).to(torch.bfloat16), "auto", x32) == ["conv2"]


# ---------------------------------------------------------------------------------------------
# Warm starts cannot hide a larger eigenvalue: a layer whose Hessian is known in closed form


def least_squares_head(spectrum: torch.Tensor, n: int = 400):
    """A linear head ``w . x`` (module ``"0"``) with loss ``0.5 * mean((w . x - y)^2)``: its
    Hessian is exactly ``X^T X / n``, built as ``Q diag(spectrum) Q^T`` (``Q`` random orthogonal).
    """
    d = spectrum.numel()
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    x = math.sqrt(n) * u @ torch.diag(spectrum.sqrt()) @ q.T  # X^T X / n = Q diag(s) Q^T
    y = torch.randn(n, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(d, 1, bias=False)).double()

    def loss(out, target):
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, n, 100)]
    return model, loss, batches, x.T @ x / n, q


@pytest.mark.parametrize("offset", [0.0, 1e-3])
def test_warm_start_on_the_second_eigenvector_still_finds_the_top(offset):
    # Top eigenvalues 1.5 / 1.2 / 1.05 above a bulk in (0, 1): the case where the earlier rule
    # (stop when the estimate changes by less than tol) returned about 1.2 after 2-3 HVPs.
    bulk = torch.rand(197, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    spectrum = torch.cat([torch.tensor([1.5, 1.2, 1.05], dtype=torch.float64), bulk])
    model, loss, batches, h, q = least_squares_head(spectrum)
    assert abs(float(torch.linalg.eigvalsh(h)[-1]) - 1.5) < 1e-12
    noise = torch.randn(q.shape[0], generator=torch.Generator().manual_seed(6)).double()
    v0 = q[:, 1] + offset * noise / noise.norm()  # the 2nd eigenvector, or 1e-3 away from it
    res = principal_eigenvalue(model, loss, batches, "0", max_iters=100, tol=1e-6, v0=v0)
    assert res.converged
    assert abs(res.value - 1.5) <= 1e-4 * 1.5
    # The residual reported is the one computed directly from the Ritz vector.
    x = res.vector.double()
    direct = float((h @ x - res.value * x).norm()) / abs(res.value)
    assert res.residual <= 1e-6
    assert abs(res.residual - direct) <= 1e-3 * direct + 1e-12


def test_without_the_random_mix_a_second_eigenvector_start_would_stop_on_it():
    # Why the warm start mixes in the seeded vector: Lanczos from exactly an eigenvector finds
    # an invariant Krylov space at once and can only return that eigenvalue.
    bulk = torch.rand(197, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    spectrum = torch.cat([torch.tensor([1.5, 1.2, 1.05], dtype=torch.float64), bulk])
    _, _, _, h, q = least_squares_head(spectrum)
    pure = lanczos(lambda v, k: h @ v, q[:, 1].clone(), 100, 1e-6)
    assert abs(pure.value - 1.2) < 1e-9 and pure.steps == 1
    mixed = lanczos(lambda v, k: h @ v, start_vector(200, 0, q[:, 1]), 100, 1e-6)
    assert abs(mixed.value - 1.5) < 1e-4 * 1.5


# ---------------------------------------------------------------------------------------------
# Probe memory is bounded by the micro-batch


def test_probe_memory_is_one_micro_batch_plus_the_kept_graph():
    # Inputs dominate: 8 micro-batches of 64 samples x 4096 float32 features (1 MiB each on
    # the host) into a float64 model, so each micro-batch the probe uses costs 2 MiB in the
    # compute dtype; the probed layer is the small head, so its kept graph is small.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(64, 4096, generator=g), torch.randint(0, 4, (64,), generator=g))
        for _ in range(8)
    ]
    one_input = 64 * 4096 * 8  # one micro-batch in float64
    result = {}

    def probe():
        result["r"] = principal_eigenvalue(model, CE, batches, "2", max_iters=10, tol=0)

    peak = peak_bytes(probe)
    kept = result["r"].graph_bytes
    assert 0 < kept < one_input  # the graphs of all 8 micro-batches are kept
    # Measured: peak = one micro-batch's cast input + its forward + the kept graphs + the
    # Lanczos basis (all well under a second micro-batch); the whole batch would be 8x.
    print(f"probe peak {peak} B, one micro-batch input {one_input} B, kept graphs {kept} B")
    assert peak <= one_input + kept + one_input // 4
    assert peak < 2 * one_input
