"""``TrainerConfig``: the ``trainer`` section of a run config (what DeepSpeed does not know)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data import DatasetConfig
from ..errors import ConfigError, check_number
from ..models import ModelConfig


@dataclass
class TrainerConfig:
    """Dataset, model, epoch budget and run bookkeeping for ``ds_twophase.train``.

    ds_twophase removes this section before DeepSpeed sees the config.
    """

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """The training and validation data (``trainer.dataset``; default MNIST-1D)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network (``trainer.model``; default the small MNIST-1D CNN)."""
    epochs: int = 30
    """The epoch budget E (also the schedulers' ``total_epochs`` unless given there)."""
    seed: int = 0
    """Seed of model initialisation, data order and the probe batch."""
    eval_every: int = 1
    """Evaluate on the validation split every N epochs (and always after the last)."""
    output_dir: str = "runs/default"
    """Where the resolved config, ``metrics.jsonl`` and checkpoints go."""
    checkpoint_every: int = 0
    """Save a DeepSpeed checkpoint every N epochs (0: only at the end)."""
    checkpoint_minutes: float | None = None
    """Also save a checkpoint at the first epoch end after this many minutes since the last
    checkpoint (bounds what a hard kill can lose; ``null``: off). Rank 0's clock decides."""
    keep_checkpoints: int = 2
    """How many complete checkpoints to keep (older ones are deleted after a new one is saved)."""
    num_workers: int = 0
    """Data-loader worker processes per rank (0: load in the training process)."""
    progress: Literal["auto", "on", "off"] = "auto"
    """Progress bar on rank 0: ``auto`` shows it on a terminal for epochs longer than a few
    seconds."""
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    """A NaN/Inf training loss: ``stop`` the run (nothing poisoned is saved) or ``skip`` the
    step (no update) and go on."""
    collective_timeout_minutes: float = 30.0
    """How long a rank waits in a collective for the others before the run stops with one
    line naming the place (epoch, step) and exit status 1; resume with ``--resume auto``. It
    must exceed the longest time one rank works alone while the others wait: rank 0's Hessian
    probe in ``rank0`` mode, building the data cache, writing a checkpoint. On NCCL the
    watchdog ends the process after the same time."""
    margins_every: int = 0
    """Record the normalised output margins of the training split (``margin_q1``,
    ``margin_median``, ``margin_q3``, ``margin_iqr``, ...) in ``metrics.jsonl`` every N epochs
    and after the last (0: never). Measured on rank 0 over the whole training split, about the
    cost of one training epoch each time (see ``ds_twophase.trainer.epoch_analysis``)."""

    def __post_init__(self) -> None:
        for name, low in (
            ("epochs", 1),
            ("eval_every", 1),
            ("checkpoint_every", 0),
            ("keep_checkpoints", 1),
            ("num_workers", 0),
            ("margins_every", 0),
        ):
            check_number(name, getattr(self, name), low=low, integer=True)
        check_number("seed", self.seed, integer=True)
        check_number(
            "checkpoint_minutes", self.checkpoint_minutes, low=0, low_open=True, optional=True
        )
        check_number(
            "collective_timeout_minutes", self.collective_timeout_minutes, low=0, low_open=True
        )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(
                key="output_dir", problem=f"must be a non-empty path, got {self.output_dir!r}"
            )
        out = Path(self.output_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(
                key="output_dir",
                problem=f"'{self.output_dir}' exists and is not a directory; choose a "
                "directory path (it is created if missing)",
            )


def prepare_output_dir(output_dir: str) -> Path:
    """Create the run's output directory and check that files can be written in it.

    Called once before any rank starts training, so a directory that cannot be created or
    written is one ``trainer.output_dir`` error line instead of a traceback from every rank.
    Raises :class:`ConfigError`.
    """
    out = Path(output_dir).expanduser()
    fix = "choose a directory you can write to"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # mkdir succeeds on an existing read-only directory: try writing a file in it.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            key="trainer.output_dir",
            problem=f"cannot create or write '{output_dir}' ({reason}); {fix}",
        ) from None
    return out
