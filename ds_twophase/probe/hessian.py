"""The epoch-end Hessian probe of a run (:class:`HessianProbe`: fixed probe samples, settings and
the warm-start vector) and :func:`reading_of`, its outcome as the schedule reads it.

It measures only: the epoch-end decision that calls it is
:func:`ds_twophase.schedulers.end_of_epoch.epoch_end`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ds_twophase.probe.config import ProbeConfig
from ds_twophase.probe.outcome import ProbeOutcome, select_probe_indices
from ds_twophase.probe.protocol import measure_hmax
from ds_twophase.schedulers.readings import Reading

__all__ = ["HessianProbe", "reading_of"]


class HessianProbe:
    """The epoch-end Hessian probe of a run: probe samples fixed from the seed, settings, and the
    eigenvector estimate the next probe starts from (``config.warm_start``).

    Args:
        dataset: the training set (``dataset[i]`` gives ``(input, target)``).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the micro-batch.
        config: the probe settings; ``batch_size``/``micro_batch_size``/``seed`` left ``None``
            are filled from the arguments below.
        batch_size: default probe batch size (the global train batch size).
        micro_batch_size: default probe micro-batch size (DeepSpeed's micro batch per rank).
        seed: default seed (the run's seed).
        zero_stage: the DeepSpeed ZeRO stage (rank0 mode is refused under stage 3).
    """

    def __init__(
        self,
        dataset: Any,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        config: ProbeConfig,
        *,
        batch_size: int,
        micro_batch_size: int,
        seed: int,
        zero_stage: int = 0,
        group: Any = None,
    ) -> None:
        self.dataset = dataset
        self.loss_fn = loss_fn
        # The resolved settings, typed as set (``config`` holds the same values).
        self.batch_size: int = config.batch_size or batch_size
        self.micro_batch_size: int = config.micro_batch_size or micro_batch_size
        self.seed: int = config.seed if config.seed is not None else seed
        self.config = replace(
            config,
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size,
            seed=self.seed,
        )
        self.zero_stage = zero_stage
        self.group = group
        self.draws = 0
        self.indices = self._draw()
        self.vector: torch.Tensor | None = None
        """The last successful probe's eigenvector estimate on the ranks that computed it."""

    def _draw(self) -> list[int]:
        return select_probe_indices(len(self.dataset), self.batch_size, self.seed, self.draws)

    def __call__(self, model: torch.nn.Module, device: torch.device | str) -> ProbeOutcome:
        """Measure hmax on every rank (same outcome everywhere); never raises for a failed probe.

        A probe that runs out of memory is retried once with half the micro-batch size (every
        rank sees the same outcome, so every rank retries).
        """
        if self.config.redraw:
            self.draws += 1
            self.indices = self._draw()
        outcome = self._measure(model, device, self.config)
        micro = self.micro_batch_size
        if outcome.error and "OutOfMemoryError" in outcome.error and micro > 1:
            retry = self._measure(model, device, replace(self.config, micro_batch_size=micro // 2))
            if not retry.ok:
                retry.error = (
                    f"{outcome.error}; retried with micro_batch_size {micro // 2}: {retry.error}"
                )
            outcome = retry
        if outcome.vector is not None:
            self.vector = outcome.vector
        return outcome

    def _measure(
        self, model: torch.nn.Module, device: torch.device | str, config: ProbeConfig
    ) -> ProbeOutcome:
        return measure_hmax(
            model,
            self.loss_fn,
            self.dataset,
            self.indices,
            config,
            device=device,
            group=self.group,
            zero_stage=self.zero_stage,
            v0=self.vector if self.config.warm_start else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """The probe indices and draw counter (JSON values) and ``vector``, the warm-start
        vector as a CPU tensor (``None`` before the first probe and on ranks that do not
        compute in "rank0" mode): save it from a rank that holds it (rank 0) so that a resumed
        run probes exactly as an uninterrupted one."""
        vector = None if self.vector is None else self.vector.detach().cpu().clone()
        return {"indices": list(self.indices), "draws": self.draws, "vector": vector}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (``vector`` may be absent, a tensor or an array)."""
        self.indices = [int(i) for i in state["indices"]]
        self.draws = int(state["draws"])
        vector = state.get("vector")
        self.vector = None if vector is None else torch.as_tensor(vector).clone()


PROBE_COLUMNS = (
    "hmax",
    "hmax_se",
    "probe_loss",
    "probe_loss_se",
    "probe_error",
    "probe_hvps",
    "probe_residual",
)
"""The metrics-row columns :func:`probe_columns` fills."""


def reading_of(outcome: ProbeOutcome) -> Reading:
    """A successful probe's outcome as the schedule's :class:`Reading` (``nan`` -> ``None``)."""

    def known(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return Reading(
        outcome.value, known(outcome.hmax_se), known(outcome.loss), known(outcome.loss_se)
    )


def probe_columns(outcome: ProbeOutcome | None) -> dict[str, Any]:
    """A probe's columns of the epoch's metrics row (``hmax``, ``hmax_se``, ``probe_loss``,
    ``probe_loss_se``, ``probe_error``, ``probe_hvps``, ``probe_residual``; see
    :mod:`ds_twophase.epoch_row`): all ``None`` when no probe ran, the readings ``None`` when it
    failed."""
    columns: dict[str, Any] = dict.fromkeys(PROBE_COLUMNS)
    if outcome is None:
        return columns
    columns.update(probe_error=outcome.error, probe_hvps=outcome.iterations)
    if outcome.ok:
        reading = reading_of(outcome)
        columns.update(
            hmax=reading.hmax,
            hmax_se=reading.hmax_se,
            probe_loss=reading.loss,
            probe_loss_se=reading.loss_se,
            probe_residual=outcome.residual,
        )
    return columns
