"""LARS under ZeRO-1/2 on real DeepSpeed engines: the same trust ratios as the full model.

The rank script (tests/scripts/zero_lars_check.py) trains one small model, built from the JSON
config, at stages 0, 1 and 2 with LARS and with torch SGD (gradient accumulation 2, gradient
clipping); the 2-rank partition boundary falls inside the middle weight matrix. The
criterion: LARS's stage-k/stage-0 parameter difference is at most a few times what SGD itself
shows between the same stages (reduction order, bf16 rounding), and the per-partition (wrong)
ratio is far outside it.
"""

from __future__ import annotations

import json

import pytest
import torch
from _launch import run_deepspeed

from ds_twophase import LARS
from ds_twophase.optim.lars import zero as zero_lars
from ds_twophase.optim.lars.kernel import kernel_available, kernel_module

SCRIPT = "tests/scripts/zero_lars_check.py"
# LARS may differ from stage 0 by this many times SGD's own stage-k/stage-0 difference ...
FACTOR = 4.0
# ... or, where SGD happens to agree to the last bit, by this much (relative to how far the
# parameters moved): a few float32 roundings of the norms and ratios per step over 12 steps
FLOOR = 1e-6
# the parameters (in model order: weight and bias of each Linear, the LayerNorm's two before the
# last Linear) that each rank's partition holds a fragment of
FRAGMENTS = {0: [0, 1, 2], 1: [2, 3, 4, 5, 6, 7]}


def _params(out, name):
    return torch.load(out / f"{name}.pt")


def _rel_diff(a: dict, b: dict, out, precision: str = "fp32") -> float:
    """Largest element difference between two runs, relative to the largest distance that run
    ``b`` moved a parameter element from its initial value (in bf16 runs: the bf16-rounded
    initial value): LARS moves the weights further than SGD at the same learning rate, so the
    same relative perturbation of the updates shows up as a larger absolute difference."""
    init = _params(out, "init")
    if precision == "bf16":
        init = {k: v.to(torch.bfloat16).float() for k, v in init.items()}
    moved = max((b[k] - init[k]).abs().max().item() for k in b)
    return max((a[k] - b[k]).abs().max().item() for k in b) / moved


def _record(out, name, rank):
    return json.loads((out / f"{name}_rank{rank}.json").read_text())


def _check(out, precisions, stages) -> dict:
    """Assert the criterion for every pair that ran; return the measured differences."""
    seen = {}
    # bf16 with fp32 gradient accumulation: ZeRO-1 through DeepSpeed's BF16_Optimizer
    lars = _rel_diff(_params(out, "lars_bf16acc_s1"), _params(out, "lars_bf16_s0"), out, "bf16")
    sgd = _rel_diff(_params(out, "sgd_bf16acc_s1"), _params(out, "sgd_bf16_s0"), out, "bf16")
    seen["bf16acc_s1"] = (lars, sgd)
    assert lars <= FACTOR * max(sgd, FLOOR), f"bf16 + fp32 accumulation: {lars:.3g}, {sgd:.3g}"
    for rank in (0, 1):
        rec = _record(out, "lars_bf16acc_s1", rank)
        assert rec["optimizer"] == "BF16_Optimizer" and rec["init_unchanged"], rec
        assert rec["fragments"][0]["index"] == FRAGMENTS[rank]
    for precision in precisions:
        lars0 = _params(out, f"lars_{precision}_s0")
        sgd0 = _params(out, f"sgd_{precision}_s0")
        for stage in stages:
            lars = _rel_diff(_params(out, f"lars_{precision}_s{stage}"), lars0, out, precision)
            sgd = _rel_diff(_params(out, f"sgd_{precision}_s{stage}"), sgd0, out, precision)
            bound = FACTOR * max(sgd, FLOOR)
            seen[f"{precision}_s{stage}"] = (lars, sgd)
            assert lars <= bound, f"{precision} stage {stage}: LARS {lars:.3g}, SGD {sgd:.3g}"
        eager = out / f"larseager_{precision}_s1.pt"
        if eager.exists():  # without the fused kernel (the path accelerators take)
            lars = _rel_diff(torch.load(eager), lars0, out, precision)
            seen[f"{precision}_s1_eager"] = (lars, seen[f"{precision}_s1"][1])
            assert lars <= FACTOR * max(seen[f"{precision}_s1"][1], FLOOR), lars
        offload = out / f"larsoffload_{precision}_s2.pt"
        if 2 in stages and offload.exists():  # ZeRO-Offload at stage 2
            lars = _rel_diff(torch.load(offload), lars0, out, precision)
            seen[f"{precision}_s2_offload"] = (lars, seen[f"{precision}_s2"][1])
            assert lars <= FACTOR * max(seen[f"{precision}_s2"][1], FLOOR), lars
        # the per-partition ratio: what the criterion must catch
        naive = _rel_diff(_params(out, f"naive_{precision}_s1"), lars0, out, precision)
        seen[f"naive_{precision}"] = naive
        assert naive > 100 * FACTOR * max(seen[f"{precision}_s1"][1], FLOOR), naive
        # LARS took the weights well away from where SGD took them: the comparison has teeth
        assert _rel_diff(lars0, sgd0, out, precision) > 0.05
    for precision in precisions:
        for stage in (0, *stages):
            for rank in (0, 1):
                rec = _record(out, f"lars_{precision}_s{stage}", rank)
                assert rec["basic"] == "LARS"
                # DeepSpeed's bf16 set-up step changed neither weights nor momentum
                assert rec["init_unchanged"] and rec["state_after_init"] == 0, rec
                if stage:
                    # clipping (at 0.5) was active on every step
                    assert min(rec["grad_norms"]) > 0.5
                    # one group: biases and the LayerNorm marked, not split off
                    (frag,) = rec["fragments"]
                    assert frag["count"] == 8
                    # 8x32 wholly on rank 0, 32x4 wholly on rank 1, 32x32 split between them
                    assert frag["index"] == FRAGMENTS[rank], frag
                    assert frag["shared"] == [2]  # only the split weight's norms travel
            if precision == "bf16" and stage == 0:
                assert rec["optimizer"] == "FP16_UnfusedOptimizer"  # the wrapper with set-up
    return seen


@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_zero1_and_2_lars_match_stage0_and_stage2_resumes_exactly(tmp_path):
    runs = [
        "lars_fp32_s0",
        "sgd_fp32_s0",
        "lars_fp32_s1",
        "larseager_fp32_s1",
        "sgd_fp32_s1",
        "naive_fp32_s1",
        "lars_bf16_s0",
        "sgd_bf16_s0",
        "lars_bf16_s1",
        "sgd_bf16_s1",
        "naive_bf16_s1",
        "lars_bf16acc_s1",
        "sgd_bf16acc_s1",
        "lars_fp32_s2",
        "sgd_fp32_s2",
        "larsoffload_fp32_s2",
    ]
    args = [SCRIPT, "--out", tmp_path, "--runs", ",".join(runs), "--checkpoint"]
    proc = run_deepspeed(args, timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(tmp_path, ("fp32", "bf16"), (1,))
    lars0, sgd0 = _params(tmp_path, "lars_fp32_s0"), _params(tmp_path, "sgd_fp32_s0")
    straight = _params(tmp_path, "lars_fp32_s2")
    lars = _rel_diff(straight, lars0, tmp_path)
    sgd = _rel_diff(_params(tmp_path, "sgd_fp32_s2"), sgd0, tmp_path)
    assert lars <= FACTOR * max(sgd, FLOOR), f"fp32 stage 2: LARS {lars:.3g}, SGD {sgd:.3g}"
    # ZeRO-Offload (the optimizer steps a CPU copy of the partition): the same criterion
    offload = _rel_diff(_params(tmp_path, "larsoffload_fp32_s2"), lars0, tmp_path)
    assert offload <= FACTOR * max(sgd, FLOOR), f"stage 2 offload: {offload:.3g}, SGD {sgd:.3g}"
    # stage 2 saved after 6 steps and resumed in a fresh engine: the uninterrupted run's
    # parameters, bit for bit
    resumed = _params(tmp_path, "resumed_fp32_s2")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_zero1_and_2_lars_checkpoint_and_one_rank(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    proc = run_deepspeed([SCRIPT, "--out", two, "--checkpoint"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(two, ("fp32", "bf16"), (1, 2))
    # stage 2: save after 6 steps, resume in a fresh engine: the same parameters as the
    # uninterrupted run
    resumed = _params(two, "resumed_fp32_s2")
    straight = _params(two, "lars_fp32_s2")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)

    # one rank: ZeRO-1 equals stage 0; and the 2-rank stage-2 checkpoint resumed on 1 rank
    runs = "lars_fp32_s0,lars_fp32_s1"
    proc = run_deepspeed(
        [SCRIPT, "--out", one, "--runs", runs, "--resume-from", two / "ckpt_s2"],
        num_ranks=1,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = _params(one, "lars_fp32_s1")
    assert _rel_diff(single, _params(one, "lars_fp32_s0"), two) <= FLOOR
    # the same global batches as the 2-rank run: one rank agrees with two
    assert _rel_diff(single, _params(two, "lars_fp32_s1"), two) <= FACTOR * FLOOR
    # the 2-rank checkpoint on 1 rank: refused by DeepSpeed before anything is loaded (the
    # momentum buffers are per-rank slices; see docs/lars.md, "Checkpoints")
    rescaled = json.loads((one / "rescaled.json").read_text())
    assert rescaled["error"].startswith(
        "ZeRORuntimeException: The checkpoint being loaded used "
        "a DP world size of 2 but the current world size is 1"
    )


def test_first_step_with_all_zero_gradients_changes_nothing():
    """DeepSpeed's bf16 wrappers step once with zero gradients while setting up."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    start = [p.detach().clone() for p in params]
    opt = LARS(
        [{"params": params[:1]}, {"params": params[1:], "adapt": False, "weight_decay": 0.0}],
        lr=4.0,
        weight_decay=5e-4,
    )
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, s) for p, s in zip(params, start, strict=True))
    assert not opt.state
    # the first real step then matches a fresh optimizer's first step
    reference = [p.detach().clone().requires_grad_() for p in params]
    ref_opt = LARS(
        [{"params": reference[:1]}, {"params": reference[1:], "adapt": False, "weight_decay": 0}],
        lr=4.0,
        weight_decay=5e-4,
    )
    for p, r in zip(params, reference, strict=True):
        p.grad = torch.randn_like(p)
        r.grad = p.grad.clone()
    opt.step()
    ref_opt.step()
    assert all(torch.equal(p, r) for p, r in zip(params, reference, strict=True))
    # once started, zero gradients are an ordinary step (weight decay applies)
    before = params[0].detach().clone()
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert not torch.equal(params[0], before)


def test_group_of_one_whole_parameter_copy_takes_the_ordinary_path():
    """bf16 at stage 0: DeepSpeed swaps each parameter for an fp32 master copy; a group holding
    one such copy is an ordinary tensor (no partition mapping), not a ZeRO partition."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 4))
    master = weight.detach().clone().requires_grad_()
    opt = LARS([weight], lr=0.5, weight_decay=1e-3)
    opt.param_groups[0]["params"] = [master]
    reference = weight.detach().clone().requires_grad_()
    ref_opt = LARS([reference], lr=0.5, weight_decay=1e-3)
    for _ in range(3):
        master.grad = torch.randn_like(master)
        reference.grad = master.grad.clone()
        opt.step()
        ref_opt.step()
    assert torch.equal(master, reference)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "path",
    ["kernel", "pytorch", pytest.param("cuda", marks=[pytest.mark.gpu, _CUDA])],
)
@pytest.mark.parametrize(
    "momentum,nesterov,clip", [(0.9, False, False), (0.9, True, False), (0.0, False, True)]
)
def test_partition_update_matches_per_parameter_lars(momentum, nesterov, clip, path):
    """One rank's flat partition (fragments of adapted and excluded parameters, a large one
    sliced, a "shared" one whose norms go through the all-reduce path, padding between them)
    updated exactly as LARS updates the parameters one by one, through the fused kernel, the
    PyTorch implementation on CPU, and on CUDA (the accelerators' path)."""
    torch.manual_seed(0)
    kernel = path == "kernel"
    sizes = [7, 300, (1 << 19) + 1000, 5, 4096, 64]  # the third spans two slices
    excluded = [False, True, False, False, False, True]
    gap = 3  # DeepSpeed's alignment padding: must stay untouched
    bounds, start = [], 0
    for n in sizes:
        bounds.append((start, n))
        start += n + gap
    flat = torch.randn(start)
    grad = torch.randn(start)
    buf = torch.randn(start) * 0.1
    params = [flat[s : s + n].clone() for s, n in bounds]
    grads = [grad[s : s + n].clone() for s, n in bounds]
    bufs = [buf[s : s + n].clone() for s, n in bounds]
    pads = [flat[s + n : s + n + gap].clone() for s, n in bounds]
    layout = zero_lars.PartitionLayout(
        flat, len(sizes), list(range(len(sizes))), bounds, None, sizes, excluded
    )
    zero_lars.check_layout(layout)  # one process: nothing is shared
    assert layout.shared == []
    layout.shared, layout.parts = [2, 4], None  # as if other ranks held parts of these two
    assert [part.positions for part in layout.split()] == [[0, 3], [1, 5], [2, 4]]
    group = {
        "lr": 0.5,
        "momentum": momentum,
        "weight_decay": 1e-3,
        "trust_coefficient": 0.01,
        "eps": 1e-8,
        "clip": clip,
        "nesterov": nesterov,
    }
    module = kernel_module() if kernel else None
    assert (module is not None) == kernel or not kernel_available()
    if path == "cuda":  # the layout's tensors on the GPU; results compared on the CPU
        layout.flat, layout.parts = flat.cuda(), None
        grad, buf = grad.cuda(), buf.cuda()
    zero_lars.step_partition(layout, grad, buf if momentum else None, group, module)
    flat, buf = layout.flat.cpu(), buf.cpu()
    for (s, n), p, g, b, pad, out in zip(bounds, params, grads, bufs, pads, excluded, strict=True):
        p64, g64, b64 = p.double(), g.double(), b.double()
        if out:
            d = g64
        else:
            r = 0.01 * p64.norm() / (g64.norm() + 1e-3 * p64.norm() + 1e-8)
            r = min(r / 0.5, 1.0) if clip else r
            d = r * (g64 + 1e-3 * p64)
        if momentum:
            b64 = momentum * b64 + d
            d = d + momentum * b64 if nesterov else b64
        p64 -= 0.5 * d
        torch.testing.assert_close(flat[s : s + n].double(), p64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(buf[s : s + n].double(), b64, rtol=1e-5, atol=1e-6)
        assert torch.equal(flat[s + n : s + n + gap], pad)


@pytest.mark.multiproc
@pytest.mark.slow  # about 70 s; moved out of the default suite to keep it near 10 minutes
@pytest.mark.timeout(300)
def test_zero1_first_step_with_one_rank_all_zero_gradient_steps_on_every_rank(tmp_path):
    """Only DeepSpeed's set-up step is skipped, and the ranks decide it together: a first real
    step whose gradient is zero on one rank's whole partition is taken there too (it used to
    skip it alone, leaving the other rank in the norm all-reduce)."""
    proc = run_deepspeed(["tests/scripts/zero_lars_zero_grad.py", str(tmp_path)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["fragments1"] == [[0], [1]]  # rank 1 holds only `second`
    for name in ("first", "second"):
        s0, s1 = torch.tensor(result["stage0"][name]), torch.tensor(result["stage1"][name])
        torch.testing.assert_close(s1, s0, rtol=1e-6, atol=1e-7)
