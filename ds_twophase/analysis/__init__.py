"""Looking at finished runs: plots, seed-grouped tables, statistics and margin distributions.

Typical use::

    from ds_twophase.analysis import load_run, mean_std, bootstrap_ci

    run = load_run("runs/mnist1d/two_phase_lars")
    run.events.decays      # epochs whose decision decayed the LR
    mean_std([0.91, 0.92]) # (mean, sample std)

Each module has one job: :mod:`.runs` reads a run directory, :mod:`.stats` holds the summary
statistics, :mod:`.plot` draws the curves (needs the ``plot`` extra), :mod:`.report` tabulates
runs grouped by config, :mod:`.margins` computes normalised output margins.
"""

from ..epoch_row import Events
from .runs import Run, load_run
from .stats import bootstrap_ci, mean_std, paired_difference

__all__ = ["Events", "Run", "bootstrap_ci", "load_run", "mean_std", "paired_difference"]
