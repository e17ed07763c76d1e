"""One training epoch: the loader, batches on the engine, the micro-batch loop, non-finite losses.

The trainer calls :func:`train_epoch` once per epoch; benches time it and reuse
:func:`make_loader`, :func:`to_engine` and :func:`cross_entropy` to build the loops they compare
against.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from . import checkpoint, dist, faults


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss, ranks disagreeing); the message says why."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and accelerators) deterministically."""
    torch.manual_seed(seed)


def make_loader(dataset: Any, sampler: DistributedSampler, micro: int, workers: int) -> DataLoader:
    """Micro-batches of ``micro`` samples from ``sampler``; tensor datasets are indexed a whole
    batch at a time (one gather per tensor instead of one Python call per sample)."""
    if isinstance(dataset, TensorDataset):
        batches = BatchSampler(sampler, micro, drop_last=True)
        return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers)
    return DataLoader(
        dataset, sampler=sampler, batch_size=micro, drop_last=True, num_workers=workers
    )


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy computed in fp32 (bf16 logits are upcast)."""
    return F.cross_entropy(outputs.float(), targets)


def to_engine(engine: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``(inputs, targets)`` to the engine's device and floating inputs to its dtype."""
    x, y = batch
    dtype = next(engine.module.parameters()).dtype
    x = x.to(engine.device, dtype=dtype if x.is_floating_point() else x.dtype, non_blocking=True)
    return x, y.to(engine.device, non_blocking=True)


def train_epoch(
    engine: Any,
    loader: Iterable[Any],
    epoch: int,
    *,
    micro_batches: int,
    seed: int,
    skip_nonfinite: bool,
    progress: str = "off",
) -> tuple[float, int]:
    """One epoch of exactly ``micro_batches`` micro-batches (whole optimizer steps).

    Returns the mean training loss over all ranks and micro-batches (NaN when none was finite),
    and (with ``skip_nonfinite``) the number of micro-batches skipped on all ranks. The caller
    sets the sampler's epoch.
    """
    # Per-epoch seeds make a resumed run draw the same random numbers (dropout, augmentation).
    rank = dist.get_rank()
    torch.manual_seed(seed * 100_003 + epoch * 1009 + rank)
    engine.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    finite = 0
    bar = _progress(progress, epoch, micro_batches)
    for i, batch in enumerate(loader):
        if i == micro_batches:
            break
        x, y = to_engine(engine, batch)
        out = engine(x)
        loss = cross_entropy(out, y)
        if faults.nan_loss_at(epoch, i, rank):
            loss = loss * math.nan
        if skip_nonfinite and not math.isfinite(loss.item()):
            # Backward through a zero loss keeps DeepSpeed's accumulation and gradient
            # all-reduce in step on every rank while this micro-batch contributes nothing.
            engine.backward(out.sum() * 0.0)
        else:
            engine.backward(loss)
            loss_sum += loss.detach().double()
            finite += 1
        engine.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    # Data parallelism does not synchronise BatchNorm statistics: give every rank rank 0's,
    # which the checkpoint stores, so evaluation and a resumed run see the same model.
    dist.broadcast_tensors_(engine.module.buffers())
    total, count = dist.all_reduce_sums([loss_sum.item(), float(finite)])
    skipped = int(dist.get_world_size() * micro_batches - count)
    if count == 0:
        return math.nan, skipped
    return total / count, skipped


def stop_if_nonfinite(epoch: int, train_loss: float, ckpt_dir: Path) -> None:
    """Raise :class:`TrainingStopped` (naming the newest checkpoint) for a non-finite loss."""
    if math.isfinite(train_loss):
        return
    kept = checkpoint.newest_complete(ckpt_dir, warn=lambda _: None)
    where = f"the newest checkpoint is {kept[1]}" if kept else "no checkpoint was saved"
    raise TrainingStopped(
        f"epoch {epoch}: training loss is {train_loss}; stopping without saving ({where}); "
        'lower the LR, set gradient_clipping, or set trainer.on_nonfinite_loss="skip"'
    )


def _progress(mode: str, epoch: int, total: int) -> Any:
    show = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    if not show or not dist.is_rank_zero():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", leave=False, mininterval=2.0, delay=3.0)
