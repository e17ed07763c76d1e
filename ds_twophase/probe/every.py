"""``probe.every``: hmax for analysis every N epochs with any scheduler, never fed to a decision.

The analysis probe is a :class:`HessianProbe` of its own: the same settings and probe samples as
the schedule's probe, but its own warm-start vector. Sharing TwoPhaseLR's probe would move the
vector the schedule's next probe starts from, so the schedule's hmax, and with it a decision,
could differ from a run without ``every``. It runs after the epoch's decision (the decision
cannot see it), at epochs N, 2N, ... where the schedule did not probe itself (the caller says
so: that row already holds the schedule's hmax), on every rank in the probe's own mode (``rank0`` or ``sharded``).
Its warm-start state is a checkpoint part (``probe_every``) next to the schedule probe's, so a resumed run
measures as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from ds_twophase import dist
from ds_twophase.probe.hessian import HessianProbe, probe_columns


class PeriodicProbe:
    """Measures hmax every ``every`` epochs for analysis (see the module docstring).

    Args:
        probe: the analysis probe (not the schedule's: its warm start must stay separate).
        every: measure at the end of epochs ``every``, ``2 * every``, ...
    """

    def __init__(self, probe: HessianProbe, every: int) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"PeriodicProbe: every must be an integer >= 1, got {every!r}")
        self.probe = probe
        self.every = every

    def due(self, epoch: int, scheduled: bool) -> bool:
        """True at an epoch divisible by ``every`` whose schedule did not probe (``scheduled``)."""
        return not scheduled and epoch % self.every == 0

    def measure(self, engine: Any, epoch: int, columns: dict[str, Any], scheduled: bool) -> float:
        """At a due epoch, probe on every rank and write the probe's columns
        (:func:`~ds_twophase.probe.hessian.probe_columns`) into ``columns``; the probe's seconds
        (0 when not due). A failed probe leaves ``hmax`` ``None`` and warns; the run goes on."""
        if not self.due(epoch, scheduled):
            return 0.0
        outcome = self.probe(engine.module, engine.device)
        columns.update(probe_columns(outcome))
        if not outcome.ok:
            dist.warn_rank_zero(f"epoch {epoch}: probe.every failed: {outcome.error}")
        return outcome.seconds

    def state_dict(self) -> dict[str, Any]:
        """Its probe's state (indices, draws and its own warm-start vector) for a checkpoint."""
        return self.probe.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.probe.load_state_dict(state)
