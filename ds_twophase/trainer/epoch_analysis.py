"""Epoch-end measurements for analysis that never change training: ``probe.every`` (hmax with
any scheduler, :mod:`ds_twophase.probe.every`) and ``trainer.margins_every`` (the normalised
output margins of :mod:`ds_twophase.analysis.margins`).

Both run after the epoch's decision, so no decision sees them. Margins are measured on rank 0
alone over the whole training split (the numbers ``ds-twophase margins`` reports for a
checkpoint of that epoch), one forward and one input-gradient backward per batch: about the
cost of a training epoch, so ``margins_every: 5`` adds about a fifth to the training time. The
other ranks wait for rank 0's result, which every rank then writes into its metrics row.
"""

from __future__ import annotations

from typing import Any

from .. import dist
from ..config import RunConfig
from ..probe import HessianProbe
from ..probe.every import PeriodicProbe
from ..probe.layer import preserve_rng_state
from .epoch import cross_entropy


class EpochAnalysis:
    """The run's ``probe.every`` probe and ``trainer.margins_every`` margins (either may be off).

    Args:
        run: the validated run config (with its ``trainer`` section).
        train_set: the training split (probe samples, margins).
        batch_size: the global train batch size (default probe batch).
        micro_batch_size: DeepSpeed's micro-batch per rank (default probe micro-batch; margins
            go in batches of four of them, as evaluation does).
    """

    def __init__(
        self, run: RunConfig, train_set: Any, *, batch_size: int, micro_batch_size: int
    ) -> None:
        if run.trainer is None:
            raise ValueError("EpochAnalysis: the run config has no trainer section")
        self.train_set = train_set
        self.margins_every = run.trainer.margins_every
        self.margin_batch = 4 * micro_batch_size
        self.probe: PeriodicProbe | None = None
        if run.probe is not None and run.probe.every is not None:
            probe = HessianProbe(
                train_set,
                cross_entropy,
                run.probe,
                batch_size=batch_size,
                micro_batch_size=micro_batch_size,
                seed=run.trainer.seed,
                zero_stage=run.zero_stage,
            )
            self.probe = PeriodicProbe(probe, run.probe.every)

    def measure(
        self, engine: Any, epoch: int, last: int, row: dict[str, Any], *, scheduled: bool
    ) -> float:
        """Add this epoch's analysis columns to ``row`` (every rank, after the decision); the
        probe seconds spent (to add to ``probe_seconds``). ``scheduled``: the schedule's own
        probe ran this epoch (its hmax is in the row already)."""
        seconds = 0.0
        if self.probe is not None:
            seconds = self.probe.measure(engine, epoch, row, scheduled)
        every = self.margins_every
        if every and (epoch % every == 0 or epoch == last):
            row.update(dist.on_rank_zero(lambda: self._margins(engine)))
        return seconds

    def _margins(self, engine: Any) -> dict[str, float]:
        from ..analysis.margins import margin_summary

        # The margin pass must not move the random streams training draws from next.
        with preserve_rng_state():
            return margin_summary(engine.module, self.train_set, engine.device, self.margin_batch)
