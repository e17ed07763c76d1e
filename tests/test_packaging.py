"""Installing ds_twophase keeps the PyTorch that is already there, and CI's pins match the ranges."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from _launch import REPO

TORCH_PACKAGES = {"torch", "torchvision", "triton"}
OFFLINE_HINTS = ("No matching distribution", "Could not fetch", "NewConnectionError", "offline")


def test_install_into_this_environment_keeps_its_torch():
    # A full resolve of the project and its dependencies against what is installed here. Build
    # isolation is off so that building the project's metadata needs nothing from an index;
    # resolving needs an index only if something is missing, and then the test skips offline.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"]
        + ["--no-build-isolation", "-e", str(REPO)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and any(hint in proc.stderr for hint in OFFLINE_HINTS):
        pytest.skip(f"pip could not reach a package index: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert names & TORCH_PACKAGES == set(), names
    assert not any(name.startswith("nvidia-") for name in names), names
    assert names == {"ds-twophase"}  # everything else is already satisfied


def test_constraints_pin_the_installed_torch_stack():
    pins = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    )
    for name in ("torch", "torchvision", "deepspeed"):
        assert pins[name] == version(name), f"constraints.txt: {name}=={pins[name]}"


def test_ci_runs_the_readme_test_command_with_the_constraints():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Test\n\n```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert block[0] == 'pip install -c constraints.txt -e ".[dev]"' and block[0] in ci
    assert ci[-1] == block[-1] == 'python -m pytest -m "not slow"'
