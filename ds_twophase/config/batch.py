"""The batch arithmetic, in one place: DeepSpeed's three batch keys, the world size, and how many
optimizer steps an epoch holds.

``train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x ranks``;
DeepSpeed fills in whichever of the three keys is missing. Only this module works the numbers
out and only it writes the "no full optimizer step per epoch" error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, Problem, is_int

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@dataclass(frozen=True)
class Batch:
    """The resolved batch sizes of a run at a known world size."""

    train: int
    """Samples per optimizer step over all ranks (``train_batch_size``)."""
    micro: int
    """Samples per forward pass on one rank (``train_micro_batch_size_per_gpu``)."""
    gas: int
    """Micro-batches per optimizer step (``gradient_accumulation_steps``)."""
    world_size: int
    """Data-parallel ranks."""

    def steps_per_epoch(self, num_samples: int, *, pad: bool, drop_last: bool) -> int:
        """Optimizer steps in one pass over ``num_samples`` samples (may be 0).

        ``pad``: the sampler pads every rank to ``ceil(N / ranks)`` samples (DeepSpeed's loader)
        instead of dropping the remainder (the trainer's ``DistributedSampler(drop_last=True)``).
        ``drop_last``: the loader drops the last partial micro-batch.
        """
        per_rank = (
            math.ceil(num_samples / self.world_size) if pad else num_samples // self.world_size
        )
        micro_batches = per_rank // self.micro if drop_last else math.ceil(per_rank / self.micro)
        return micro_batches // self.gas

    def min_samples(self, *, pad: bool, drop_last: bool) -> int:
        """The fewest samples that give one optimizer step per epoch."""
        # Micro-batches a rank must see: gas full ones, or gas - 1 full and one partial.
        per_rank = self.micro * self.gas if drop_last else self.micro * (self.gas - 1) + 1
        return self.world_size * (per_rank - 1) + 1 if pad else self.world_size * per_rank

    def require_steps(
        self, num_samples: int, *, pad: bool, drop_last: bool, key: str, given: str = ""
    ) -> int:
        """:meth:`steps_per_epoch`, raising the "no full optimizer step" error (keyed ``key``)
        when it is 0."""
        steps = self.steps_per_epoch(num_samples, pad=pad, drop_last=drop_last)
        if steps < 1:
            minimum = self.min_samples(pad=pad, drop_last=drop_last)
            raise ConfigError(
                no_step_problem(num_samples, self.train, minimum, key=key, given=given)
            )
        return steps


def no_step_problem(
    num_samples: int, batch: int, minimum: int, *, key: str, given: str = ""
) -> Problem:
    """The one "an epoch would have no optimizer step" error. ``key`` names what to raise: the
    sample count (e.g. ``trainer.dataset.train_size``) or ``train_batch_size``."""
    if key == "train_batch_size":
        fix = f"lower train_batch_size or train on at least {minimum} samples"
    else:
        fix = f"set {key} to at least {minimum} or lower train_batch_size"
    return Problem(
        key,
        f"{num_samples} training samples{given} are fewer than one global batch of {batch} "
        f"(train_batch_size), so an epoch would have no full optimizer step; {fix}",
    )


def resolve_batch(cfg: dict[str, Any], world_size: int) -> Batch:
    """The batch sizes filled in the way DeepSpeed fills the missing ones (call on a config
    whose batch keys passed :func:`check_batch` for this world size)."""
    train: int | None = cfg.get("train_batch_size")
    micro: int | None = cfg.get("train_micro_batch_size_per_gpu")
    gas: int | None = cfg.get("gradient_accumulation_steps")
    if train is None:
        if micro is None:
            raise ConfigError(
                key="train_batch_size",
                problem="set train_batch_size or train_micro_batch_size_per_gpu",
            )
        gas = gas or 1
        train = micro * gas * world_size
    elif micro is not None and gas is None:
        gas = train // (micro * world_size)
    elif gas is not None and micro is None:
        micro = train // (gas * world_size)
    elif micro is None and gas is None:
        gas = 1
        micro = train // world_size
    assert micro is not None and gas is not None  # every branch above filled them in
    return Batch(int(train), int(micro), int(gas), world_size)


def _positive_int(cfg: dict[str, Any], key: str, errors: list[Problem]) -> int | None:
    if key not in cfg:
        return None
    value = cfg[key]
    if not is_int(value) or value < 1:
        errors.append(Problem(key, f"must be a positive integer, got {json.dumps(value)}"))
        return None
    return value


def check_batch(cfg: dict[str, Any], world_size: int | None) -> list[Problem]:
    """The batch keys' problems; with ``world_size`` unknown, only those that do not need it."""
    errors: list[Problem] = []
    train, micro, gas = (_positive_int(cfg, key, errors) for key in BATCH_KEYS)
    if errors:
        return errors
    key = "train_batch_size"
    if train is None and micro is None:
        return [Problem(key, "set train_batch_size or train_micro_batch_size_per_gpu")]
    if world_size is None:
        if train is not None and micro is not None and train % micro:
            errors.append(
                Problem(
                    key,
                    f"{train} is not a multiple of train_micro_batch_size_per_gpu ({micro}); it "
                    "must equal micro batch x gradient_accumulation_steps x ranks",
                )
            )
        if train is not None and micro is not None and gas is not None and train % (micro * gas):
            errors.append(
                Problem(
                    key,
                    f"{train} is not divisible by micro batch x gradient_accumulation_steps "
                    f"({micro} x {gas}); fix one of the three",
                )
            )
        return errors
    ranks = world_size
    if train is not None and micro is not None and gas is not None:
        if train != micro * gas * ranks:
            errors.append(
                Problem(
                    key,
                    f"{train} != train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
                    f"ranks = {micro} x {gas} x {ranks} = {micro * gas * ranks}; fix one of them",
                )
            )
    elif train is not None and micro is not None:
        if train % (micro * ranks):
            errors.append(
                Problem(
                    key,
                    f"{train} is not divisible by train_micro_batch_size_per_gpu x ranks = "
                    f"{micro} x {ranks}; use a multiple of {micro * ranks} or another micro batch",
                )
            )
    elif train is not None and gas is not None:
        if train % (gas * ranks):
            errors.append(
                Problem(
                    key,
                    f"{train} is not divisible by gradient_accumulation_steps x ranks = "
                    f"{gas} x {ranks}; use a multiple of {gas * ranks}",
                )
            )
    elif train is not None and train % ranks:
        errors.append(
            Problem(
                key, f"{train} is not divisible by the {ranks} ranks; use a multiple of {ranks}"
            )
        )
    return errors
