"""Why a two-phase run is still exploring at its end: the message of
:meth:`ds_twophase.schedulers.TwoPhaseLR.exploration_unfinished`, read from the decision state."""

from __future__ import annotations

from .decision import EXPLORATION, TwoPhaseDecision


def exploration_unfinished(d: TwoPhaseDecision) -> str | None:
    """Why the schedule is still exploring (at the peak LR), else ``None``; meant for the end
    of a run, where staying in exploration means the LR was never decayed."""
    if d.phase != EXPLORATION:
        return None
    head = f"still in the exploration phase after {d.epoch} epochs, so the LR never left its peak"
    switch_at = d.switch_epoch
    if switch_at is not None and switch_at <= d.epoch:
        return (
            f"{head}: the switch due at the end of epoch {switch_at} is waiting for a "
            f"successful hmax probe ({d.probe_failures} failed in a row; the switch is "
            f"forced after {d.max_probe_failures}); see the probe warnings"
        )
    if d.plateau_epoch is not None:
        return (
            f"{head}: the plateau at epoch {d.plateau_epoch} put the switch at the end of "
            f"epoch {switch_at}, after the last epoch; lower extra_epochs_ratio or set a lower "
            "max_exploration_epochs"
        )
    after = f" after the {d.warmup_epochs} warmup epochs" if d.warmup_epochs else ""
    why = f"the training loss did not plateau ({d.patience} epochs without improvement{after})"
    if d.max_exploration_epochs is None:
        return (
            f"{head}: {why} and no max_exploration_epochs is set; set "
            "max_exploration_epochs or a smaller plateau_patience"
        )
    return (
        f"{head}: {why} and max_exploration_epochs ({d.max_exploration_epochs}) was not "
        "reached; lower max_exploration_epochs"
    )
