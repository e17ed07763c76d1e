"""LARS against timm.optim.Lars and torch.optim.SGD, param groups, and the JSON registry."""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from timm.optim import Lars as TimmLars
from torch import nn

from ds_twophase.errors import ConfigError
from ds_twophase.optim import (
    LARS,
    OPTIMIZERS,
    build_optimizer_factory,
    check_zero_compatible,
    find_optimizer,
    lars_param_groups,
    split_param_groups,
)
from ds_twophase.optim.lars import kernel as lars_kernel

# Most numerical tests run twice: through the fused CPU kernel ("kernel") and through the
# PyTorch implementation it falls back to ("eager"). In the eager path small tensors take the
# multi-tensor path and tensors of 65536+ elements the CPU per-tensor path
# (update.CPU_LARGE_NUMEL in ds_twophase/optim/lars). Index 4 starts at zero weights, index 5 always gets zero grads.
SHAPES = [(7,), (16, 3, 3, 3), (300, 300), (1 << 17,), (5,), (10, 20), (64, 64, 3, 3), (1,)]
ZERO_WEIGHT, ZERO_GRAD = 4, 5


KERNEL_DISABLED = os.environ.get(lars_kernel.KERNEL_ENV, "1") in ("0", "false", "no", "off")


@pytest.fixture(params=["kernel", "eager"])
def kernel(request):
    """True: the step must run through the fused CPU kernel; False: through the fallback."""
    if request.param == "kernel" and KERNEL_DISABLED:
        pytest.skip(f"{lars_kernel.KERNEL_ENV}=0")
    return request.param == "kernel"


def _lars(params, *args, kernel=True, **kwargs):
    """LARS on or off the fused kernel (the private switch, set before the first step)."""
    opt = LARS(params, *args, **kwargs)
    opt._kernel = kernel
    return opt


def _assert_path(opt, kernel):
    """Every float32/float64 CPU bucket went to the kernel, or none did (not vacuous)."""
    assert opt._plans, "no step was taken"
    buckets = [b for _, plan in opt._plans.values() for b in plan]
    assert all(b.kernel == kernel for b in buckets)


def _params(shapes=SHAPES, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype) * 0.1) for s in shapes]
    if len(params) > ZERO_WEIGHT:
        with torch.no_grad():
            params[ZERO_WEIGHT].zero_()
    return params


def _set_grads(params, gen):
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if i == ZERO_GRAD:
            p.grad.zero_()


def _step_alongside(opts, params, twin, gen, steps):
    """``steps`` steps of every optimizer in ``opts``: fresh grads on ``params`` (``_set_grads``),
    copied to ``twin`` (another optimizer's copy of the parameters)."""
    for _ in range(steps):
        _set_grads(params, gen)
        for p, q in zip(params, twin, strict=True):
            q.grad = p.grad.clone()
        for opt in opts:
            opt.step()


def _run(make_opt, steps=50, dtype=torch.float32, shapes=SHAPES):
    params = _params(shapes, dtype=dtype)
    opt = make_opt(params)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        _set_grads(params, gen)
        opt.step()
    return [p.detach() for p in params]


CASES = [
    dict(momentum=m, weight_decay=wd, nesterov=n, clip=c)
    for m, wd, n, c in itertools.product([0.0, 0.9], [0.0, 5e-4], [False, True], [False, True])
    if not (n and m == 0)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_timm_over_50_steps(case, kernel):
    opts = []

    def make(ps):
        opts.append(_lars(ps, lr=0.1, kernel=kernel, **case))
        return opts[-1]

    ours = _run(make)
    _assert_path(opts[0], kernel)
    ref = _run(
        lambda ps: TimmLars(
            ps,
            lr=0.1,
            momentum=case["momentum"],
            weight_decay=case["weight_decay"],
            nesterov=case["nesterov"],
            trust_clip=case["clip"],
            always_adapt=True,
            foreach=False,
        )
    )
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_matches_timm_float64_and_lars_hyperparameters(kernel):
    kw = dict(momentum=0.8, weight_decay=1e-3, eps=1e-6)
    ours = _run(
        lambda ps: _lars(ps, lr=0.5, trust_coefficient=0.02, kernel=kernel, **kw),
        dtype=torch.float64,
    )
    ref = _run(
        lambda ps: TimmLars(ps, lr=0.5, trust_coeff=0.02, always_adapt=True, **kw),
        dtype=torch.float64,
    )
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_large_tensors_updated_in_slices_match_timm(nesterov, kernel):
    # the eager CPU per-tensor path works in slices of 2**19 elements: 600 x 1000 is two; the
    # kernel sums norms in chunks and updates tensors of 2**18+ elements in parallel tasks
    shapes = [(600, 1000), (3,), (7, 7), (70000,), (5,), (2, 2)]
    kw = dict(momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    ours = _run(lambda ps: _lars(ps, lr=0.1, kernel=kernel, **kw), steps=10, shapes=shapes)
    ref = _run(lambda ps: TimmLars(ps, lr=0.1, always_adapt=True, **kw), steps=10, shapes=shapes)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_many_small_tensors_span_several_buckets(kernel):
    # 40 x 60000 floats exceed one CPU bucket (4 MiB of weights + grads): several buckets
    shapes = [(60000,)] * 40 + [(3, 3)]
    params = _params(shapes)
    ref_params = [nn.Parameter(p.detach().clone()) for p in params]
    opt = _lars(params, lr=0.2, weight_decay=1e-4, kernel=kernel)
    ref = TimmLars(ref_params, lr=0.2, momentum=0.9, weight_decay=1e-4, always_adapt=True)
    gen = torch.Generator().manual_seed(3)
    _step_alongside([opt, ref], params, ref_params, gen, 5)
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_memory_formats_match_timm(kernel):
    # channels_last weights with contiguous grads: neither PyTorch's fused SGD kernel nor ours
    # may see them (ours hands them to the eager path)
    gen = torch.Generator().manual_seed(6)
    shapes = [(8, 4, 3, 3), (64, 128, 3, 3), (32, 16, 3, 3)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    with torch.no_grad():
        for p in params[:2]:
            p.set_(p.contiguous(memory_format=torch.channels_last))
    ref_params = [nn.Parameter(p.detach().clone()) for p in params]
    opt = _lars(params, lr=0.1, weight_decay=5e-4, nesterov=True, kernel=kernel)
    ref = TimmLars(ref_params, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for _ in range(10):
        for p, q in zip(params, ref_params, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)  # contiguous
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert params[1].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_first_step_by_hand(kernel):
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # ||p|| = 5
    p.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)  # ||g|| = 2
    lr, wd, eta, eps = 0.1, 0.01, 0.001, 1e-8
    opt = _lars([p], lr=lr, weight_decay=wd, trust_coefficient=eta, eps=eps, kernel=kernel)
    opt.step()
    _assert_path(opt, kernel)
    ratio = eta * 5.0 / (2.0 + wd * 5.0 + eps)
    d = [ratio * (0.0 + wd * 3.0), ratio * (2.0 + wd * 4.0)]
    expected = torch.tensor([3.0 - lr * d[0], 4.0 - lr * d[1]], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)


def test_clip_caps_the_per_tensor_rate_at_lr(kernel):
    # trust ratio eta * 1 / 1e-6 = 1000 >> 1: LARC clips ratio / lr to 1, i.e. plain SGD
    p = nn.Parameter(torch.ones(1))
    p.grad = torch.full((1,), 1e-6)
    _lars([p], lr=0.5, momentum=0.0, clip=True, kernel=kernel).step()
    torch.testing.assert_close(p.detach(), torch.ones(1) - 0.5 * 1e-6)


@pytest.mark.parametrize("lr", [0.0, 0.1])
@pytest.mark.parametrize("clip", [False, True])
def test_zero_norms_never_give_nan_or_inf(lr, clip, kernel):
    shapes = [(4,), (100000,), (3, 3), (1 << 19,)]
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    opt = _lars(params, lr=lr, weight_decay=1e-4, eps=0.0, clip=clip, kernel=kernel)
    for step in range(4):
        for p in params:
            # zero weights with zero grads, then zero weights with grads, then zero grads
            p.grad = torch.zeros_like(p) if step % 2 == 0 else torch.ones_like(p)
        opt.step()
    for p in params:
        assert torch.isfinite(p).all()
        assert torch.isfinite(opt.state[p]["momentum_buffer"]).all()


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
        nn.LayerNorm(5),
    )


def test_param_groups_exclude_biases_and_norms():
    model = _tiny_model()
    groups = lars_param_groups(model, weight_decay=5e-4)
    assert [(g["adapt"], g["weight_decay"]) for g in groups] == [(True, 5e-4), (False, 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups[0]["params"]) == ["0.weight", "4.weight"]
    assert all(p.ndim < 2 for p in groups[1]["params"])
    assert len(groups[1]["params"]) == 6


def test_param_groups_options():
    model = _tiny_model()
    model[1].weight.requires_grad_(False)
    (group,) = lars_param_groups(model, weight_decay=1e-4, exclude_bias_and_norm=False)
    assert group["adapt"] and len(group["params"]) == 7
    groups = lars_param_groups(model, weight_decay=1e-4, exclude=["4.*"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in groups[0]["params"]] == ["0.weight"]
    assert "4.weight" in [names[id(p)] for p in groups[1]["params"]]
    assert "1.weight" not in [names[id(p)] for g in groups for p in g["params"]]


def test_excluded_group_is_plain_momentum_sgd_without_decay(kernel):
    model = _tiny_model()
    ref_model = copy.deepcopy(model)
    opt = _lars(lars_param_groups(model, weight_decay=5e-4), lr=0.1, momentum=0.9, kernel=kernel)
    ref_groups = lars_param_groups(ref_model, weight_decay=5e-4)
    sgd = torch.optim.SGD(ref_groups[1]["params"], lr=0.1, momentum=0.9, weight_decay=0.0)
    timm = TimmLars(ref_groups[0]["params"], lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        for m, optimizers in ((model, [opt]), (ref_model, [sgd, timm])):
            for o in optimizers:
                o.zero_grad()
            m(x).square().mean().backward()
            for o in optimizers:
                o.step()
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the excluded parameters really moved (so the comparison above is not vacuous)
    assert not torch.equal(model[1].bias, _tiny_model()[1].bias)


def test_adapt_false_with_weight_decay_is_torch_sgd(kernel):
    params = _params()
    ref_params = [nn.Parameter(p.detach().clone()) for p in params]
    opt = _lars(
        [{"params": params, "adapt": False}],
        lr=0.1,
        weight_decay=1e-3,
        nesterov=True,
        kernel=kernel,
    )
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    gen = torch.Generator().manual_seed(4)
    _step_alongside([opt, ref], params, ref_params, gen, 10)
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


BAD = [
    (dict(lr=-0.1), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, momentum=1.0), "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (dict(lr=0.1, trust_coefficient=0.0), "trust_coefficient"),
    (dict(lr=0.1, eps=-1e-8), "eps"),
    (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
    (dict(lr=0.1, clip="yes"), "clip"),
    (dict(lr="0.1"), "lr"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[name for _, name in BAD])
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        LARS([nn.Parameter(torch.ones(2))], **kwargs)


def test_bad_group_option_names_the_group():
    good = {"params": [nn.Parameter(torch.ones(2))]}
    bad = {"params": [nn.Parameter(torch.ones(2))], "weight_decay": -1.0}
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.weight_decay"):
        LARS([good, bad], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.adapt"):
        LARS([{"params": good["params"], "adapt": 1}], lr=0.1)


def test_params_without_grad_are_skipped_and_grads_untouched(kernel):
    params = _params()
    params[1].grad = None
    frozen = params[1].detach().clone()
    opt = _lars(params[1:3], lr=0.1, weight_decay=1e-4, kernel=kernel)
    params[2].grad = torch.randn_like(params[2])
    grad = params[2].grad.clone()
    opt.step()
    assert torch.equal(params[1], frozen)
    assert params[1] not in opt.state
    assert torch.equal(params[2].grad, grad)


def test_closure_loss_is_returned():
    p = nn.Parameter(torch.ones(3))

    def closure():
        loss = (p * 2).sum()
        loss.backward()
        return loss

    assert LARS([p], lr=0.1).step(closure).item() == 6.0


def test_sparse_gradients_are_refused():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        LARS([p], lr=0.1).step()


def test_state_dict_round_trip_continues_identically(kernel):
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(12)]
    params = _params()
    opt = _lars(params, lr=0.1, weight_decay=5e-4, nesterov=True, kernel=kernel)
    for step in grads[:6]:
        for p, g in zip(params, step, strict=True):
            p.grad = g
        opt.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [nn.Parameter(t.clone()) for t in saved["params"]]
    # lr, nesterov, weight_decay come back from the state dict
    opt2 = _lars(resumed, lr=1.0, kernel=kernel)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["nesterov"] and opt2.param_groups[0]["lr"] == 0.1
    for step in grads[6:]:
        for p, q, g in zip(params, resumed, step, strict=True):
            p.grad, q.grad = g, g.clone()
        opt.step()
        opt2.step()
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


def test_lr_change_between_steps_is_used(kernel):
    # the scheduler writes param_groups[i]["lr"]; nothing may cache it
    p, q = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    a = _lars([p], lr=0.1, momentum=0.0, kernel=kernel)
    b = _lars([q], lr=0.3, momentum=0.0, kernel=kernel)
    a.param_groups[0]["lr"] = 0.3
    p.grad, q.grad = torch.ones(4), torch.ones(4)
    a.step()
    b.step()
    assert torch.equal(p, q)


def test_compile_matches_timm_and_lr_changes_do_not_recompile():
    from torch._dynamo.utils import counters

    shapes = [(7,), (16, 3, 3, 3), (9,), (3,), (5,), (10, 20), (300, 300)]
    params, ref_params = _params(shapes), _params(shapes)
    # compile=True applies where the fused kernel does not
    opt = _lars(params, lr=0.1, weight_decay=5e-4, clip=True, compile=True, kernel=False)
    ref = TimmLars(ref_params, lr=0.1, momentum=0.9, weight_decay=5e-4, trust_clip=True)
    gen = torch.Generator().manual_seed(7)
    for step in range(8):
        lr = 0.1 * (1 + step)  # a scheduler changes lr every step
        opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = lr
        _set_grads(params, gen)
        for p, q in zip(params, ref_params, strict=True):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert opt._compile, "compilation failed (see the warning)"
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_failure_warns_and_falls_back_to_eager():
    # a real compiler failure: inductor pointed at a C++ compiler that does not exist (a shape
    # no other test uses, so nothing is cached for it)
    import torch._inductor.config as inductor_config

    p, q = nn.Parameter(torch.ones(5, 13)), nn.Parameter(torch.ones(5, 13))
    a = _lars([p], lr=0.1, compile=True, kernel=False)
    b = _lars([q], lr=0.1, kernel=False)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        with pytest.warns(RuntimeWarning, match=r"LARS\(compile=True\): torch.compile failed"):
            p.grad, q.grad = torch.full((5, 13), 0.5), torch.full((5, 13), 0.5)
            a.step()
            b.step()
    assert not a._compile
    p.grad, q.grad = torch.full((5, 13), 0.25), torch.full((5, 13), 0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a.step()  # stays eager: no second attempt, no second warning
    b.step()
    assert not caught
    assert torch.equal(p, q)


# --- the fused CPU kernel ---------------------------------------------------------------------


def _kernel_or_skip():
    if KERNEL_DISABLED:
        pytest.skip(f"{lars_kernel.KERNEL_ENV}=0")
    module = lars_kernel.kernel_module()
    assert module is not None, "the fused CPU kernel did not build (see the warning)"
    return module


def _twin_steps(make, params, steps, gen):
    """Step a kernel and an eager copy of ``params`` on the same grads; both parameter lists."""
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    opts = [make(params, True), make(twin, False)]
    _step_alongside(opts, params, twin, gen, steps)
    _assert_path(opts[0], True)
    _assert_path(opts[1], False)
    return params, twin


@pytest.fixture(params=[True, False], ids=["avx2", "baseline"])
def avx2(request):
    """The kernel's AVX2 loops (where the CPU has AVX2 and FMA) or its x86-64 baseline loops."""
    module = _kernel_or_skip()
    if module._set_avx2(request.param) != request.param:
        pytest.skip("this CPU has no AVX2 + FMA: the baseline loops run in every test")
    yield request.param
    module._set_avx2(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_eager_path_with_several_groups(dtype, avx2):
    # float32: 20 steps of rounding differences (the eager path's fused multiply-adds are not
    # all in the same places as either copy of the kernel's loops)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for momentum, nesterov, clip in [(0.9, False, True), (0.9, True, False), (0.0, False, False)]:
        params = _params(dtype=dtype)

        def make(ps, kernel, momentum=momentum, nesterov=nesterov, clip=clip):
            groups = [
                {"params": ps[:3], "weight_decay": 1e-3, "clip": clip},
                {"params": ps[3:6], "adapt": False, "weight_decay": 1e-4},
                {"params": ps[6:], "lr": 0.05, "eps": 0.0, "trust_coefficient": 0.02},
            ]
            return _lars(groups, lr=0.2, momentum=momentum, nesterov=nesterov, kernel=kernel)

        ours, eager = _twin_steps(make, params, 20, torch.Generator().manual_seed(8))
        for a, b in zip(ours, eager, strict=True):
            torch.testing.assert_close(a, b, **tol)


def test_kernel_result_is_the_same_for_any_thread_count_and_run(avx2):
    # large tensors: norms summed over several chunks, update in parallel tasks
    shapes = [(3 << 18,), (1000, 700), (64, 64, 3, 3), (7,)]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1, 3):
            torch.set_num_threads(n)
            params = _params(shapes)
            opt = LARS(params, lr=0.1, weight_decay=5e-4, nesterov=True)
            gen = torch.Generator().manual_seed(9)
            for _ in range(3):
                _set_grads(params, gen)
                opt.step()
            _assert_path(opt, True)
            results.append([p.detach() for p in params])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_kernel_skips_tensors_it_cannot_take_and_the_step_still_matches():
    module = _kernel_or_skip()
    gen = torch.Generator().manual_seed(10)
    base = torch.randn(32, 40, generator=gen)
    params = [
        nn.Parameter(torch.randn(16, 8, 3, 3, generator=gen)),  # taken
        nn.Parameter(base[:, ::2]),  # not dense: its grad is contiguous
        nn.Parameter(torch.randn(8, 4, 3, 3, generator=gen)),  # channels_last, grad too: taken
        nn.Parameter(torch.randn(6, 4, 3, 3, generator=gen)),  # channels_last, grad not
    ]
    with torch.no_grad():
        for i in (2, 3):
            params[i].set_(params[i].contiguous(memory_format=torch.channels_last))
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    grads[2] = grads[2].contiguous(memory_format=torch.channels_last)
    bufs = [torch.zeros_like(p) for p in params]
    before = [p.detach().clone() for p in params]
    # lr, momentum, weight_decay, trust_coefficient, eps, nesterov, clip, adapt
    skipped = module.lars_step(params, grads, bufs, 0.1, 0.9, 5e-4, 1e-3, 1e-8, False, False, True)
    assert skipped == [1, 3]
    assert not torch.equal(params[0], before[0]) and not torch.equal(params[2], before[2])
    assert torch.equal(params[1], before[1]) and torch.equal(params[3], before[3])
    assert params[1].stride() == (40, 2)  # still a view of base

    # through LARS: the skipped tensors take the eager path
    with torch.no_grad():
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    twin[1] = nn.Parameter(base.clone()[:, ::2])
    with torch.no_grad():
        twin[1].copy_(before[1])
        for i in (2, 3):
            twin[i].set_(twin[i].contiguous(memory_format=torch.channels_last))
    ours = _lars(params, lr=0.1, weight_decay=5e-4, kernel=True)
    eager = _lars(twin, lr=0.1, weight_decay=5e-4, kernel=False)
    for _ in range(5):
        for p, q in zip(params, twin, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        params[2].grad = params[2].grad.contiguous(memory_format=torch.channels_last)
        twin[2].grad = params[2].grad.clone()
        ours.step()
        eager.step()
    _assert_path(ours, True)
    for a, b in zip(params, twin, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kernel_bumps_versions_like_in_place_ops_and_leaves_grads_alone():
    _kernel_or_skip()
    params = _params([(4, 4), (300, 300)])
    opt = LARS(params, lr=0.1, weight_decay=1e-4)
    _set_grads(params, torch.Generator().manual_seed(11))
    grads = [p.grad.clone() for p in params]
    grad_versions = [p.grad._version for p in params]
    versions = [p._version for p in params]
    opt.step()
    bufs = [opt.state[p]["momentum_buffer"] for p in params]
    buf_versions = [b._version for b in bufs]
    opt.step()
    _assert_path(opt, True)
    assert [p._version for p in params] == [v + 2 for v in versions]
    assert [b._version for b in bufs] == [v + 1 for v in buf_versions]
    assert [p.grad._version for p in params] == grad_versions
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


def test_dtypes_the_kernel_does_not_take_use_the_eager_path():
    _kernel_or_skip()
    results = []
    for kernel in (True, False):
        params = _params([(5, 5), (7,)], dtype=torch.bfloat16)
        opt = _lars(params, lr=0.1, weight_decay=1e-4, kernel=kernel)
        gen = torch.Generator().manual_seed(12)
        for _ in range(3):
            _set_grads(params, gen)
            opt.step()
        _assert_path(opt, False)
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


_SUBPROCESS_STEPS = textwrap.dedent(
    """
    import json, os, warnings, torch
    from torch import nn
    from ds_twophase.optim import LARS, lars

    def run(kernel):
        gen = torch.Generator().manual_seed(0)
        shapes = [(5,), (300, 300), (4, 3, 3, 3)]
        ps = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = LARS(ps, lr=0.1, weight_decay=1e-4)
        opt._kernel = kernel
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return ps, opt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps, opt = run(True)
        run(True)  # a second optimizer: no second attempt, no second warning
    ref, _ = run(False)
    print(json.dumps({
        "warnings": [[str(w.message), os.path.basename(w.filename)] for w in caught],
        "kernel": [b.kernel for b in opt._plans[0, 0][1]] == [True],
        "equal_to_eager": all(torch.equal(a, b) for a, b in zip(ps, ref)),
        "digest": sum(float(p.double().sum()) for p in ps),
    }))
    """
)


def _run_steps_subprocess(tmp_path, **env):
    script = tmp_path / "lars_steps.py"
    script.write_text(_SUBPROCESS_STEPS)
    full_env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), **env}
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc):
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_kernel_that_cannot_build_warns_once_and_falls_back(tmp_path):
    # a real build failure: a compiler that does not exist, in a fresh extensions directory
    env = {"CXX": "/nonexistent/c++", lars_kernel.KERNEL_ENV: "1"}
    rec = _result(_run_steps_subprocess(tmp_path, **env))
    assert len(rec["warnings"]) == 1, rec["warnings"]
    message, filename = rec["warnings"][0]
    assert message.startswith("LARS: the fused CPU kernel is unavailable, using the slower")
    assert "DS_TWOPHASE_LARS_KERNEL=0" in message
    assert filename == "lars_steps.py"  # points at the caller of step()
    assert not rec["kernel"] and rec["equal_to_eager"]


def test_kernel_disabled_by_environment_is_never_built(tmp_path):
    rec = _result(_run_steps_subprocess(tmp_path, **{lars_kernel.KERNEL_ENV: "0"}))
    assert rec["warnings"] == []
    assert not rec["kernel"] and rec["equal_to_eager"]
    assert not (tmp_path / "ext").exists()


@pytest.mark.slow
def test_two_processes_building_the_kernel_at_once_share_one_build(tmp_path):
    # two ranks starting together on a fresh machine: torch's file lock lets one build while
    # the other waits, then both load the same module
    env = {lars_kernel.KERNEL_ENV: "1"}
    procs = [_run_steps_subprocess(tmp_path, **env) for _ in range(2)]
    recs = [_result(p) for p in procs]
    for rec in recs:
        assert rec["warnings"] == [] and rec["kernel"]
    assert recs[0]["digest"] == recs[1]["digest"]
    (build,) = (tmp_path / "ext").iterdir()
    assert [p.name for p in build.glob("*.so")] == [f"{build.name}.so"]


# --- JSON registry ---------------------------------------------------------------------------


def test_registry_and_factory_build_lars_with_groups():
    assert OPTIMIZERS["LARS"] is LARS and find_optimizer("lars") is LARS
    assert find_optimizer("Adam") is None
    model = _tiny_model()
    factory = build_optimizer_factory(
        "LARS", {"lr": 0.2, "weight_decay": 1e-4, "clip": True, "exclude": ["4.*"]}, model
    )
    opt = factory(list(model.parameters()))
    assert isinstance(opt, LARS)
    adapted, excluded = opt.param_groups
    assert adapted["adapt"] and adapted["weight_decay"] == 1e-4 and adapted["clip"]
    assert not excluded["adapt"] and excluded["weight_decay"] == 0.0
    assert [p.shape for p in adapted["params"]] == [model[0].weight.shape]
    assert factory().param_groups[0]["lr"] == 0.2  # no parameters given: the model's


def test_factory_keeps_callers_parameter_selection_and_groups():
    model = _tiny_model()
    factory = build_optimizer_factory("LARS", {"lr": 0.1, "exclude_bias_and_norm": True}, model)
    opt = factory([model[0].weight, model[0].bias])
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    opt = factory([{"params": list(model[4].parameters()), "lr": 0.01}])
    assert [(g["lr"], g["adapt"]) for g in opt.param_groups] == [(0.01, True), (0.01, False)]


def test_factory_unknown_keys_one_line_each_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        build_optimizer_factory(
            "LARS", {"lr": 0.1, "trust_coeff": 1e-3, "exclude_bias_and_nrom": False}, None
        )
    allowed = (
        "; allowed: clip, compile, eps, exclude, exclude_bias_and_norm, lr, momentum, nesterov, "
        "trust_coefficient, weight_decay"
    )
    assert err.value.messages == [
        "optimizer.params.trust_coeff: unknown key for LARS (did you mean 'trust_coefficient'?)"
        + allowed,
        "optimizer.params.exclude_bias_and_nrom: unknown key for LARS "
        "(did you mean 'exclude_bias_and_norm'?)" + allowed,
    ]


@pytest.mark.parametrize(
    "params,message",
    [
        ({}, "optimizer.params.lr: required by LARS"),
        ({"lr": -1}, "optimizer.params.lr: must be a number >= 0, got -1"),
        ({"lr": 0.1, "momentum": 2}, "optimizer.params.momentum: must be a number < 1, got 2"),
        ({"lr": 0.1, "exclude_bias_and_norm": "no"}, "optimizer.params.exclude_bias_and_norm:"),
        ({"lr": 0.1, "exclude": [1]}, "optimizer.params.exclude:"),
    ],
)
def test_factory_bad_values_name_the_key(params, message):
    with pytest.raises(ConfigError) as err:
        build_optimizer_factory("LARS", params, _tiny_model())
    assert len(err.value.messages) == 1 and "\n" not in err.value.messages[0]
    assert err.value.messages[0].startswith(message)


def test_factory_unknown_type():
    with pytest.raises(ConfigError, match=r"optimizer.type: 'LRAS' .*did you mean 'LARS'"):
        build_optimizer_factory("LRAS", {"lr": 0.1}, None)


def test_zero_stage_3_is_refused():
    with pytest.raises(ConfigError, match=r"zero_optimization.stage: LARS works with stages 0, 1"):
        check_zero_compatible(3)


def test_zero_stages_0_to_2_and_other_optimizers_pass():
    for stage in (0, 1, 2):
        check_zero_compatible(stage)
    check_zero_compatible(3, "Adam")
    assert math.isclose(LARS([nn.Parameter(torch.ones(1))], lr=0.1).defaults["eps"], 1e-8)


def test_group_with_excluded_marks_steps_like_split_groups():
    """A group built for ZeRO (``split_param_groups(mark_only=True)``: biases and norms marked
    ``excluded`` within the group) that is not flattened steps exactly as the two split groups."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    marked = split_param_groups(model.parameters(), model, mark_only=True)
    (group,) = marked
    assert group["excluded"] == [p.ndim < 2 for p in model.parameters()]
    a = LARS(marked, lr=0.3, weight_decay=1e-2, trust_coefficient=0.02)
    b = LARS(
        split_param_groups(twin.parameters(), twin),
        lr=0.3,
        weight_decay=1e-2,
        trust_coefficient=0.02,
    )
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )


@pytest.mark.parametrize("excluded", [[True], [True, False, "no"], "yes"])
def test_bad_excluded_marks_are_refused(excluded):
    params = [
        nn.Parameter(torch.zeros(2, 2)),
        nn.Parameter(torch.zeros(2)),
        nn.Parameter(torch.zeros(3)),
    ]
    with pytest.raises(
        ValueError,
        match=r"param_groups\[0\]\.excluded: expected one true or false per parameter \(3\)",
    ):
        LARS([{"params": params, "excluded": excluded}], lr=0.1)
