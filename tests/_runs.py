"""Reading what a training run left in its output directory (shared by the end-to-end tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = "configs/tiny/mnist1d_2rank.json"
"""The tiny MNIST-1D run every end-to-end test starts from (relative to the repository)."""
TIMING = ("epoch_seconds", "probe_seconds")
"""Metrics columns that differ between two otherwise identical runs."""


def read_metrics(out: Path) -> list[dict]:
    """The rows of ``<out>/metrics.jsonl`` ([] when there is none yet)."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(rows: list[dict]) -> list[dict]:
    """``rows`` without the wall-clock columns, for comparing two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def final_params(out: Path) -> dict[str, torch.Tensor]:
    """The model state of the newest checkpoint of the run in ``out``."""
    ckpt = Path(out) / "checkpoints"
    latest = (ckpt / "latest").read_text().strip()
    return torch.load(ckpt / latest / "mp_rank_00_model_states.pt", weights_only=False)["module"]


class RunDir:
    """A run's output directory: the ``--set`` flag that points a run at it, and its files."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def flag(self) -> list[str]:
        """``["--set", "trainer.output_dir=<path>"]``."""
        return ["--set", f"trainer.output_dir={self.path}"]

    def metrics(self) -> list[dict]:
        """The rows of its ``metrics.jsonl``."""
        return read_metrics(self.path)

    def final_params(self) -> dict[str, torch.Tensor]:
        """The model state of its newest checkpoint."""
        return final_params(self.path)
