"""Run under the deepspeed launcher: LARS (and torch SGD) at ZeRO stages 0, 1 and 2, from JSON.

Every configuration trains the same small model for ``STEPS`` optimizer steps (gradient
accumulation 2, gradient clipping active) on the same data, in one launch; rank 0 saves the
full fp32 (master) parameters of each run to ``<out>/<name>.pt`` (the initial ones to
``init.pt``) and a record of the run to
``<out>/<name>.json`` for the test to compare. Names: ``<opt>_<precision>_s<stage>``, plus
``naive_<precision>_s1``: LARS with the per-partition (wrong) trust ratio, ``larseager_*``: LARS
without its fused CPU kernel (the PyTorch implementation, which accelerators run),
``larsoffload_*``: with ``offload_optimizer`` on the CPU, ``bf16acc``: bf16
with fp32 gradient accumulation (ZeRO-1 then uses DeepSpeed's ``BF16_Optimizer``), and, with
``--checkpoint``, ``resumed_fp32_s2``: stage 2 saved after half the steps, loaded into a fresh
engine and continued.

The model (also on one rank, with the same global batches): weights of 8x32, 32x32 and 32x4,
their biases and a LayerNorm between the last two (1540 elements, one group under ZeRO with the
biases and the LayerNorm marked excluded), so on 2 ranks the partition boundary (770) falls
inside the middle weight, and the first and last weight lie wholly on one rank each.
"""

import argparse
import json
from pathlib import Path

import deepspeed
import torch

import ds_twophase
from ds_twophase import dist
from ds_twophase.dist import exit_process

STEPS = 12
GAS = 2
BATCH = 32  # global batch; the data are laid out for 2 ranks of 8 samples per micro-step
# the same learning rate for both, so that the excluded group (plain momentum SGD in LARS)
# moves as SGD does; SGD without weight decay, so that DeepSpeed's bf16 set-up step (zero
# gradients) leaves it alone at stage 0 too
LARS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 0.5}
SGD = {"lr": 0.05, "momentum": 0.9}


def config(opt: str, precision: str, stage: int, world: int) -> dict:
    params = LARS if opt != "sgd" else SGD
    cfg = {
        "train_batch_size": BATCH,
        "train_micro_batch_size_per_gpu": BATCH // GAS // world,
        "gradient_accumulation_steps": GAS,
        "gradient_clipping": 0.5,
        "steps_per_print": 10**6,
        "optimizer": {"type": "SGD" if opt == "sgd" else "LARS", "params": dict(params)},
        "zero_optimization": {"stage": stage},
    }
    if opt == "sgd" and stage:
        cfg["zero_allow_untested_optimizer"] = True
    if precision.startswith("bf16"):
        cfg["bf16"] = {"enabled": True}
    if precision == "bf16acc":  # ZeRO-1 then runs through DeepSpeed's BF16_Optimizer
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return cfg


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.LayerNorm(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )


def batches(rank: int, world: int) -> list:
    """The same global data for every run: step s, micro-step k, this rank's slice (on one
    rank, both halves)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GAS, BATCH // GAS, 8, generator=g) * 3
    y = torch.randn(STEPS, GAS, BATCH // GAS, 4, generator=g) * 3
    n = BATCH // GAS // world
    part = slice(rank * n, (rank + 1) * n)
    return [(x[s, k, part], y[s, k, part]) for s in range(STEPS) for k in range(GAS)]


def full_fp32(engine) -> dict:
    """Name -> the full fp32 master value of each parameter (collective under ZeRO)."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    opt = engine.optimizer
    if hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups"):  # stage 0 bf16
        for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups, strict=True):
            for lp, hp in zip(lp_group, hp_group, strict=True):
                masters[id(lp)] = hp
    out = {}
    for name, p in engine.module.named_parameters():
        if engine.zero_optimization_stage():
            value = safe_get_full_fp32_param(p)
        else:
            value = masters.get(id(p), p)
        out[name] = value.detach().float().clone()
    return out


def train(engine, data, start: int, stop: int) -> list:
    norms = []
    for s in range(start, stop):
        for k in range(GAS):
            x, y = data[s * GAS + k]
            x = x.to(engine.module[0].weight.dtype)
            loss = torch.nn.functional.mse_loss(engine(x).float(), y)
            engine.backward(loss)
            engine.step()
        norm = engine.get_global_grad_norm()  # None at stage 0 fp32
        norms.append(None if norm is None else float(norm))
    return norms


def build(cfg: dict):
    engine, _, _, _ = ds_twophase.initialize(model=make_model(), config=cfg)
    return engine


def run(name: str, cfg: dict, out: Path, data: list, naive: bool = False) -> None:
    init = {n: p.detach().clone() for n, p in make_model().named_parameters()}
    engine = build(cfg)
    basic = engine.basic_optimizer
    if name.startswith("larseager"):  # the PyTorch implementation (accelerators' path)
        basic.disable_kernel()
    record = {
        "optimizer": type(engine.optimizer).__name__,
        "basic": type(basic).__name__,
        "state_after_init": len(basic.state),
    }
    # DeepSpeed's bf16 set-up step must leave the (master) weights alone
    dtype = torch.bfloat16 if "bf16" in cfg else torch.float32
    masters = full_fp32(engine)
    record["init_unchanged"] = all(torch.equal(masters[n], init[n].to(dtype).float()) for n in init)
    if name.startswith("lars") or naive:
        groups = basic.param_groups
        record["group_sizes"] = [len(basic._lp_groups[i]) for i in range(len(basic._lp_groups))]
        if naive:  # treat each flat partition as one tensor: the per-partition (wrong) ratio
            basic._lp_ids.update(id(p) for g in groups for p in g["params"])
            for g in groups:
                g.pop("excluded", None)
    record["grad_norms"] = train(engine, data, 0, STEPS)
    if name.startswith("lars") and engine.zero_optimization_stage():
        record["fragments"] = [
            {"count": lay.count, "index": lay.index, "bounds": lay.bounds, "shared": lay.shared}
            for lay in basic._layouts.values()
        ]
    params = full_fp32(engine)
    if dist.get_rank() == 0:
        torch.save(params, out / f"{name}.pt")
    record["rank"] = dist.get_rank()
    (out / f"{name}_rank{dist.get_rank()}.json").write_text(json.dumps(record))


def resumed(cfg: dict, out: Path, data: list) -> None:
    engine = build(cfg)
    train(engine, data, 0, STEPS // 2)
    engine.save_checkpoint(str(out / "ckpt_s2"), tag="half")
    del engine
    engine = build(cfg)
    ds_twophase.load_checkpoint(engine, out / "ckpt_s2", tag="half")
    train(engine, data, STEPS // 2, STEPS)
    params = full_fp32(engine)
    if dist.get_rank() == 0:
        torch.save(params, out / "resumed_fp32_s2.pt")


def rescaled(cfg: dict, ckpt: Path, out: Path, data: list) -> None:
    """Resume a checkpoint written by another number of ranks; record what happened."""
    engine = build(cfg)
    try:
        ds_twophase.load_checkpoint(engine, ckpt, tag="half")
    except BaseException as exc:  # noqa: BLE001 - recorded for the test to judge
        (out / "rescaled.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    train(engine, data, STEPS // 2, STEPS)
    params = full_fp32(engine)
    if dist.get_rank() == 0:
        torch.save(params, out / "rescaled_fp32_s2.pt")
    (out / "rescaled.json").write_text(json.dumps({"error": None}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", default="all", help="comma-separated names, or 'all'")
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument(
        "--resume-from", help="load this stage-2 checkpoint ('half') and train the second half"
    )
    args = parser.parse_args()
    out = Path(args.out)
    deepspeed.init_distributed()
    world = dist.get_world_size()
    data = batches(dist.get_rank(), world)
    if dist.get_rank() == 0:
        torch.save(
            {n: p.detach().clone() for n, p in make_model().named_parameters()}, out / "init.pt"
        )
    names = []
    for precision in ("fp32", "bf16"):
        for stage in (0, 1, 2):
            names += [f"lars_{precision}_s{stage}", f"sgd_{precision}_s{stage}"]
        names += [f"naive_{precision}_s1", f"larseager_{precision}_s1"]
        names += [f"larsoffload_{precision}_s2"]
    names += ["lars_bf16acc_s1", "sgd_bf16acc_s1"]
    if args.runs != "all":
        names = args.runs.split(",")
    for name in names:
        opt, precision, stage = name.split("_")
        stage = int(stage[1:])
        cfg = config("lars" if opt.startswith("lars") else opt, precision, stage, world)
        if opt == "larsoffload":  # ZeRO-Offload: the optimizer steps a CPU copy of the partition
            cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        run(name, cfg, out, data, naive=opt == "naive")
    if args.checkpoint:
        resumed(config("lars", "fp32", 2, world), out, data)
    if args.resume_from:
        rescaled(config("lars", "fp32", 2, world), Path(args.resume_from), out, data)


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation: a gloo thread freeing
    # the last collective's tensors then would abort the exit (see ds_twophase.dist).
    exit_process(main() or 0)
