"""Linear warmup, then step decay at fixed epochs: the paper's large-batch baselines."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError, check_number
from .base import EpochScheduler
from .two_phase import EpochRecord


def resolve_milestones(milestones: Sequence[float], total_epochs: int) -> list[int]:
    """Milestones in epochs: values below 1 are fractions of ``total_epochs`` (rounded)."""
    out = []
    for i, m in enumerate(milestones):
        check_number(f"milestones[{i}]", m, low=0, low_open=True)
        if m >= 1:
            check_number(f"milestones[{i}]", m, integer=True)
        out.append(int(m) if m >= 1 else max(1, math.floor(m * total_epochs + 0.5)))
    if out != sorted(out):
        raise ConfigError(key="milestones", problem=f"must be increasing, got {list(milestones)!r}")
    return out


class WarmupStepLR(EpochScheduler):
    """Linear per-step warmup, then multiply the LR by ``gamma`` after each milestone epoch.

    The decay after milestone m applies from the first step of epoch m + 1. The default
    milestones ``(0.5, 0.75)`` decay at 50% and 75% of ``total_epochs`` (the paper's baselines,
    x0.1 each). Warmup arguments are those of :class:`TwoPhaseLR`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        total_epochs: int,
        warmup_epochs: float = 10,
        warmup_start_factor: float = 0.0,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
    ) -> None:
        self.check_hyperparams(
            None,
            steps_per_epoch=steps_per_epoch,
            total_epochs=total_epochs,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=warmup_start_factor,
            milestones=milestones,
            gamma=gamma,
        )
        self.milestones = resolve_milestones(milestones, int(total_epochs))
        self.gamma = float(gamma)
        self._epoch = 0
        super().__init__(
            optimizer,
            steps_per_epoch=steps_per_epoch,
            total_epochs=total_epochs,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=warmup_start_factor,
        )

    @classmethod
    def check_hyperparams(cls, peak_lr: float | None, **args: Any) -> None:
        """The base checks, then the milestones (resolved against ``total_epochs``) and
        ``gamma``."""
        super().check_hyperparams(peak_lr, **args)
        milestones = args["milestones"]
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise ConfigError(
                key="milestones",
                problem=f"must be a list of epochs or fractions, got {milestones!r}",
            )
        check_number("gamma", args["gamma"], low=0, high=1, low_open=True, high_open=True)
        resolve_milestones(milestones, int(args["total_epochs"]))

    @property
    def phase(self) -> str:
        """Always ``"step"``: this schedule has no phases."""
        return "step"

    @property
    def epoch(self) -> int:
        """Completed epochs as counted by :meth:`end_epoch`."""
        return self._epoch

    def _scale(self) -> float:
        # Decided from the step count, so resuming mid-epoch or skipping end_epoch cannot drift.
        epochs_done = self.last_step // self.steps_per_epoch
        return self.gamma ** sum(1 for m in self.milestones if epochs_done >= m)

    def end_epoch(
        self, train_loss: float, hessian: Callable[[], Any], train_loss_se: float | None = None
    ) -> EpochRecord:
        """Count the epoch; never calls ``hessian``. Same interface as :class:`TwoPhaseLR`."""
        self._epoch += 1
        self.apply_lr()
        decayed = self._epoch in self.milestones
        return EpochRecord(
            epoch=self._epoch,
            phase=self.phase,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            decision="decay" if decayed else "none",
            decayed=decayed,
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable state."""
        state = super().state_dict()
        state["epoch"] = self._epoch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._check_state(state)
        self._epoch = int(state["epoch"])
        super().load_state_dict(state)
