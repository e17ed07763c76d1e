"""Your own DeepSpeed loop with ds_twophase: initialize() + one epoch_end() call per epoch.

Run with the deepspeed launcher, e.g.::

    deepspeed --num_gpus 2 examples/own_loop.py --epochs 6 --out /tmp/own_loop

Every rank prints nothing per step; rank 0 prints one line per epoch and writes
``<out>/records.json`` with the scheduler's decisions. A checkpoint is saved after every epoch
(``<out>/checkpoints``, the newest two kept, with the probe's state); ``--stop-after K`` exits
after saving epoch K, and ``--resume`` continues from the newest checkpoint::

    deepspeed --num_gpus 2 examples/own_loop.py --out /tmp/own_loop --stop-after 4
    deepspeed --num_gpus 2 examples/own_loop.py --out /tmp/own_loop --resume
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import ds_twophase
from ds_twophase import dist
from ds_twophase.loop_checkpoint import EPOCH_KEY
from ds_twophase.probe import HessianProbe, ProbeConfig, epoch_end

CONFIG = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 16,
    "steps_per_print": 1000000,
    "optimizer": {"type": "SGD", "params": {"lr": 0.5, "momentum": 0.9}},
    "scheduler": {
        "type": "TwoPhaseLR",
        "params": {"warmup_epochs": 1, "plateau_patience": 1, "max_exploration_epochs": 3},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="/tmp/own_loop")
    parser.add_argument("--stop-after", type=int, default=None, help="exit after this epoch")
    parser.add_argument("--resume", action="store_true", help="continue from the newest save")
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x[:, :5].sum(dim=1) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))

    engine, _, loader, scheduler = ds_twophase.initialize(
        model=model, training_data=data, config=CONFIG, total_epochs=args.epochs
    )
    # The probe: a fixed probe batch of 64 samples, measured in micro-batches of 16.
    probe = HessianProbe(
        data, F.cross_entropy, ProbeConfig(max_iters=10), batch_size=64, micro_batch_size=16, seed=0
    )
    out, records = Path(args.out), []
    start = 0
    if args.resume:  # model, optimizer, schedule and probe as they were after the saved epoch
        path, client_state = ds_twophase.load_checkpoint(engine, out / "checkpoints", probe=probe)
        if path is not None:
            start = client_state[EPOCH_KEY]
            records = json.loads((out / "records.json").read_text())[:start]
    for epoch in range(start + 1, args.epochs + 1):
        loader.data_sampler.set_epoch(epoch)  # DeepSpeed never calls it
        loss_sum, count = 0.0, 0
        for step, (xb, yb) in enumerate(loader):
            if step == scheduler.steps_per_epoch * engine.gradient_accumulation_steps():
                break  # whole optimizer steps only, so every epoch has the same length
            loss = F.cross_entropy(engine(xb), yb)
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the scheduler at accumulation boundaries
            loss_sum, count = loss_sum + loss.item(), count + 1
        total, n = dist.all_reduce_sums([loss_sum, count])  # the epoch loss over all ranks
        result = epoch_end(engine, total / n, probe)
        records.append(result.record.to_dict())
        ds_twophase.save_checkpoint(engine, out / "checkpoints", epoch, probe)  # every rank
        if dist.is_rank_zero():
            r = result.record
            print(f"epoch {r.epoch} loss {total / n:.4f} lr {r.lr:.4g} {r.phase} {r.decision}")
            out.mkdir(parents=True, exist_ok=True)
            (out / "records.json").write_text(json.dumps(records))
        if epoch == args.stop_after:
            break
    # End the process group after the last collective: without it a gloo thread can abort the
    # interpreter's exit (exit -6) after all the work was done.
    ds_twophase.shutdown()


if __name__ == "__main__":
    main()
