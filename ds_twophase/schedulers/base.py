"""What every ds_twophase LR scheduler shares: per-step linear warmup and the param-group writes.

DeepSpeed calls ``step(**lr_kwargs)`` once per optimizer step (only at gradient-accumulation
boundaries, and not when an fp16/bf16 overflow skipped the step) and reads the LR back from
``optimizer.param_groups[*]["lr"]``. If ``step`` raised ``TypeError`` DeepSpeed would silently call
``step(train_batch_size)``, so ``step`` takes and ignores any arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import ConfigError, Problem, check_number, is_int, unknown_keys

__all__ = ["EpochScheduler", "linear_warmup_factor"]


def linear_warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """LR factor for optimizer step ``step`` (1-based) of a linear warmup over ``warmup_steps``.

    Step ``k`` of ``W`` uses ``start + (1 - start) * k / W``: the first step already moves
    (``start_factor`` itself is never used as an LR) and step ``W`` reaches the peak.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


class EpochScheduler:
    """Base class: an LR of ``peak * warmup * scale(epoch state)`` per param group.

    Subclasses implement :meth:`_scale` (the multiplier after warmup) and may keep epoch-level
    state updated by :meth:`end_epoch`. The peak LR of each group is its ``lr`` at construction.
    Hyperparameters are checked in one place, :meth:`check_hyperparams`, which the constructor
    calls and config validation reaches through :meth:`check_params` without building anything.
    """

    @classmethod
    def check_hyperparams(cls, peak_lr: float | None, **args: Any) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) keyed by argument name for the first
        bad constructor argument; ``args`` holds every keyword argument of the constructor.
        ``peak_lr`` is the smallest param-group LR (``None``: not known yet, checks against it
        are skipped). Subclasses extend this with their own arguments."""
        check_number("steps_per_epoch", args["steps_per_epoch"], low=1, integer=True)
        check_number("total_epochs", args["total_epochs"], low=1, integer=True)
        check_number("warmup_epochs", args["warmup_epochs"], low=0)
        check_number("warmup_start_factor", args["warmup_start_factor"], low=0, high=1)

    @classmethod
    def check_params(
        cls,
        params: Mapping[str, Any],
        *,
        total_epochs: object = None,
        peak_lr: float | None = None,
    ) -> list[Problem]:
        """The problems of constructor arguments ``params`` (keyed by argument name), found
        without building the scheduler: unknown names and what :meth:`check_hyperparams` says.

        ``steps_per_epoch`` and ``total_epochs`` may be missing (they are resolved when the
        engine is built); checks that need the epoch budget then use ``total_epochs`` (when a
        positive integer, else 1).
        """
        sig = inspect.signature(cls.__init__)
        names = [n for n in sig.parameters if n not in ("self", "optimizer")]
        unknown = unknown_keys(params, names)
        if unknown:
            return unknown
        args = {
            n: p.default
            for n, p in sig.parameters.items()
            if n in names and p.default is not p.empty
        }
        args["steps_per_epoch"] = 1
        args["total_epochs"] = total_epochs if is_int(total_epochs) and total_epochs > 0 else 1
        args.update(params)
        try:
            cls.check_hyperparams(peak_lr, **args)
        except ConfigError as exc:
            return exc.problems
        return []

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        total_epochs: int,
        warmup_epochs: float,
        warmup_start_factor: float,
    ) -> None:
        # The subclass has run check_hyperparams (with its own arguments) before this.
        if not optimizer.param_groups:
            raise ValueError("optimizer has no param groups")
        self.optimizer = optimizer
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = int(total_epochs)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start_factor = float(warmup_start_factor)
        self.warmup_steps = round(self.warmup_epochs * self.steps_per_epoch)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        # Number of optimizer steps taken so far; the LR in the groups is the one for step+1.
        self.last_step = 0
        self.apply_lr()

    # -- the LR --------------------------------------------------------------------------
    def _scale(self) -> float:
        raise NotImplementedError

    def _floor(self, lr: float, base: float) -> float:
        """The LR ``lr`` of a group whose peak is ``base`` after any floor (none here)."""
        return lr

    def lrs(self) -> list[float]:
        """The LR of every param group for the next optimizer step."""
        warm = linear_warmup_factor(self.last_step + 1, self.warmup_steps, self.warmup_start_factor)
        scale = self._scale()
        return [self._floor(base * warm * scale, base) for base in self.base_lrs]

    def apply_lr(self) -> None:
        """Write the current LR into the optimizer's param groups.

        Call this after anything else wrote them, e.g. after ``engine.load_checkpoint`` under ZeRO,
        whose optimizer restores its own saved LR after the scheduler was loaded.
        """
        for group, lr in zip(self.optimizer.param_groups, self.lrs(), strict=True):
            group["lr"] = lr

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance by one optimizer step. Arguments (DeepSpeed's ``lr_kwargs`` or its fallback
        ``step(train_batch_size)``) are accepted and ignored."""
        self.last_step += 1
        self.apply_lr()

    def get_last_lr(self) -> list[float]:
        """The LRs currently in the param groups (torch scheduler API)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """Same as :meth:`get_last_lr` (DeepSpeed scheduler API)."""
        return self.get_last_lr()

    @property
    def epoch(self) -> int:
        """Completed epochs as counted by :meth:`end_epoch`."""
        raise NotImplementedError

    def end_epoch(
        self, train_loss: float, hessian: Callable[[], Any], train_loss_se: float | None = None
    ) -> Any:
        """Called once per epoch on every rank; see subclasses."""
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable state."""
        return {
            "type": type(self).__name__,
            "last_step": self.last_step,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output and write the restored LR into the groups."""
        self._check_state(state)
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.apply_lr()

    def _check_state(self, state: dict[str, Any]) -> None:
        """Refuse state saved by another scheduler type or for other param groups."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"scheduler state is for {state.get('type')!r}, not {type(self).__name__!r}"
            )
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(state['base_lrs'])} param groups, "
                f"the optimizer has {len(self.optimizer.param_groups)}"
            )
