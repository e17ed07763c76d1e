"""One training epoch: the loader, batches on the engine, the micro-batch loop, non-finite losses.

The trainer calls :func:`train_epoch` once per epoch; benches time it and reuse
:func:`make_loader`, :func:`to_engine` and :func:`cross_entropy` to build the loops they compare
against.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from .. import dist, faults
from ..analysis.stats import standard_error_from_sums
from . import checkpoint


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss, ranks disagreeing); the message says why."""


@dataclass
class EpochProgress:
    """Where one rank is inside an epoch: what a mid-epoch checkpoint saves so a resumed epoch
    continues bit for bit (the same batches, the same random numbers, the same mean loss)."""

    micro_batches: int
    """Micro-batches of the epoch done (a whole number of optimizer steps)."""
    loss_sum: float
    """This rank's sum of the finite micro-batch losses so far (float64)."""
    finite: int
    """This rank's number of finite micro-batch losses so far."""
    rng_state: torch.Tensor
    """This rank's torch CPU generator state after the last micro-batch."""
    loss_squares: float = 0.0
    """This rank's sum of the squared finite micro-batch losses so far (float64; for the
    epoch loss's standard error)."""


class EpochInterrupted(Exception):
    """The ranks agreed to stop inside an epoch, at an optimizer-step boundary."""

    def __init__(self, progress: EpochProgress):
        super().__init__(f"stopped after {progress.micro_batches} micro-batches")
        self.progress = progress


class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` that can leave out the first samples of one epoch (the part a
    mid-epoch checkpoint already trained); the order of the rest is unchanged."""

    skip = 0
    """Samples of this rank to leave out in the next pass (reset by :meth:`set_epoch`)."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])


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
    start: EpochProgress | None = None,
    gas: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, float, int]:
    """One epoch of exactly ``micro_batches`` micro-batches (whole optimizer steps).

    Returns the mean training loss over all ranks and micro-batches (NaN when none was finite),
    its standard error (the sample std of the finite micro-batch losses of all ranks over the
    square root of their number, from the same all-reduce; NaN for fewer than two), and (with
    ``skip_nonfinite``) the number of micro-batches skipped on all ranks. The caller
    sets the sampler's epoch (and, with ``start``, makes ``loader`` leave out the micro-batches
    ``start`` already did). ``should_stop`` (a collective) is asked after every optimizer step
    (every ``gas`` micro-batches) but the last; when it says so, :class:`EpochInterrupted`
    carries this rank's progress.
    """
    # Per-epoch seeds make a resumed run draw the same random numbers (dropout, augmentation).
    rank = dist.get_rank()
    torch.manual_seed(seed * 100_003 + epoch * 1009 + rank)
    batches = iter(loader)  # draws the loader's base seed, as an uninterrupted epoch does
    engine.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    loss_squares = torch.zeros((), dtype=torch.float64, device=engine.device)
    finite = 0
    first = 0
    if start is not None:
        torch.set_rng_state(start.rng_state)
        loss_sum += start.loss_sum
        loss_squares += start.loss_squares
        finite, first = start.finite, start.micro_batches
    bar = _progress(progress, epoch, micro_batches)
    for i, batch in enumerate(batches, start=first):
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
            value = loss.detach().double()
            loss_sum += value
            loss_squares += value * value
            finite += 1
        engine.step()
        if faults.signal_at(epoch, i, rank):
            os.kill(os.getpid(), signal.SIGTERM)  # test hook: pre-empted right here
        if faults.freeze_at(epoch, i, rank):
            os.kill(os.getpid(), signal.SIGSTOP)  # test hook: stops answering right here
        if bar is not None:
            bar.update(1)
        done = i + 1
        if should_stop is not None and done % gas == 0 and done < micro_batches and should_stop():
            if bar is not None:
                bar.close()
            state = torch.get_rng_state()
            raise EpochInterrupted(
                EpochProgress(done, loss_sum.item(), finite, state, loss_squares.item())
            )
    if bar is not None:
        bar.close()
    # Data parallelism does not synchronise BatchNorm statistics: give every rank rank 0's,
    # which the checkpoint stores, so evaluation and a resumed run see the same model.
    dist.broadcast_tensors_(engine.module.buffers())
    total, count, squares = dist.all_reduce_sums(
        [loss_sum.item(), float(finite), loss_squares.item()]
    )
    skipped = int(dist.get_world_size() * micro_batches - count)
    if count == 0:
        return math.nan, math.nan, skipped
    return total / count, standard_error_from_sums(total, squares, count), skipped


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
