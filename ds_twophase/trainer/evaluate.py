"""Validation loss and accuracy over a whole split, sharded over the ranks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .. import dist
from .epoch import to_engine


def evaluate(engine: Any, dataset: Any, batch_size: int) -> tuple[float, float]:
    """Validation loss and accuracy over the whole split, sharded over ranks without padding
    (rank ``r`` takes samples ``r, r + world, ...``), so every sample counts exactly once."""
    rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    model = engine.module
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    correct = torch.zeros((), dtype=torch.float64, device=engine.device)
    with torch.no_grad():
        for batch in _full_batches(dataset, indices, batch_size):
            x, y = to_engine(engine, batch)
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(dim=1) == y).sum().double()
    model.train(was_training)
    total_loss, total_correct, count = dist.all_reduce_sums(
        [loss_sum.item(), correct.item(), float(len(indices))]
    )
    return total_loss / count, total_correct / count


def _full_batches(dataset: Any, indices: list[int], batch_size: int) -> Iterator[Any]:
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        if isinstance(dataset, TensorDataset):
            yield dataset[chunk]
        else:
            yield torch.utils.data.default_collate([dataset[i] for i in chunk])
