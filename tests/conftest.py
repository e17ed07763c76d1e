"""Shared test configuration and fixtures.

torch stays single-threaded so two ranks share two cores. Helpers for reading a run's outputs
live in ``_runs.py``, for launching ranks in ``_launch.py``; the fixtures below wrap them.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from _launch import LAUNCHER_VARS, REPO  # noqa: E402
from _runs import TINY, RunDir  # noqa: E402


@pytest.fixture
def tiny_config() -> str:
    """Absolute path of the tiny MNIST-1D run config."""
    return str(REPO / TINY)


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    """A fresh output directory for one run (``tmp_path/out``, not created yet)."""
    return RunDir(tmp_path / "out")


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables in, none left behind (train.main sets them for one process)."""
    for key in LAUNCHER_VARS:
        monkeypatch.setenv(key, "")  # recorded, so that teardown restores the old state
        monkeypatch.delenv(key)
    return monkeypatch
