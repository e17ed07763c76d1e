"""bench/gpu_check.sh's control flow, checked without a GPU: the refusal, and with a faked
``torch.cuda.is_available`` the plan it would run (steps, commands, time limits)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch
from _launch import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ["tests", "probe", "lars", "trainer_overhead", "train_bf16"]
BUDGET_S = 8 * 60


def run_check(*args: str, fake_cuda_dir=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if fake_cuda_dir is not None:
        # sitecustomize runs in every python the script starts: the CUDA check passes.
        (fake_cuda_dir / "sitecustomize.py").write_text(
            "import torch\ntorch.cuda.is_available = lambda: True\n"
        )
        env["PYTHONPATH"] = str(fake_cuda_dir)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_it_checks_nothing_and_exits_2(tmp_path):
    proc = run_check(str(tmp_path / "out"))
    assert proc.returncode == 2
    assert (
        tmp_path / "out" / "summary.txt"
    ).read_text() == "no CUDA GPU visible: nothing to check\n"


def test_the_plan_fits_eight_minutes_and_names_each_step(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    proc = run_check(str(tmp_path / "out"), "--dry-run", "--kit", str(tmp_path), fake_cuda_dir=fake)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    plan = [re.match(r"(\w+): planned, limit (\d+)s: (.*)", line).groups() for line in lines]
    assert [name for name, _, _ in plan] == ["install", *STEPS]
    assert sum(int(limit) for _, limit, _ in plan) <= BUDGET_S
    commands = {name: command for name, _, command in plan}
    assert "--device cuda" in commands["probe"] and "--device cuda" in commands["lars"]
    assert "-m gpu" in commands["tests"]
    assert (
        '"enabled": true' in commands["train_bf16"] and "trainer.epochs=2" in commands["train_bf16"]
    )
    assert f"--no-index --find-links {tmp_path}" in commands["install"]


def test_an_unknown_option_is_refused(tmp_path):
    proc = run_check(str(tmp_path / "out"), "--kitt", "x")
    assert proc.returncode == 2 and "unknown option --kitt" in proc.stderr
