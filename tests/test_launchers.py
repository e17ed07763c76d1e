"""The trainer under the launchers users run it with: two nodes over loopback, torchrun, and
SLURM's per-task variables (launch/slurm_task.sh), each against one single-node 2-rank run of the
same config through the deepspeed runner.

Two ranks on one machine train the same tiny config every way, so the metrics (everything but the
timings) must be equal record for record.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _launch import REPO, free_port, kill_group, remove_shm_buffers, run_deepspeed, start_group

TINY = "configs/tiny/mnist1d_2rank.json"
TIMEOUT = 300


def rank_env(**extra: str) -> dict[str, str]:
    """The test process's environment with one thread per rank and this worktree first."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(extra)
    return env


def free_port_in(low: int, high: int) -> int:
    """A loopback port in [low, high) that is free right now."""
    for port in random.Random(os.getpid()).sample(range(low, high), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def train_args(out: Path) -> list[str]:
    return ["--config", TINY, "--set", f"trainer.output_dir={out}"]


def comparable(out: Path) -> list[dict]:
    """The run's metrics.jsonl without the wall-clock fields."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def run_together(cmds: list[list[str]], envs: list[dict[str, str]], port: int) -> list[tuple]:
    """Start every command at once (each in its own process group), wait for all; kill every
    group that is left when one fails or the time runs out."""
    procs = [start_group(cmd, env=env, cwd=REPO) for cmd, env in zip(cmds, envs, strict=True)]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            kill_group(proc)
        remove_shm_buffers(port)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The tiny config on 2 ranks of one node through ``deepspeed --num_gpus 2``."""
    out = tmp_path_factory.mktemp("single_node")
    proc = run_deepspeed(["ds_twophase.train", *train_args(out)], module=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = comparable(out)
    assert [r["epoch"] for r in rows] == list(range(1, 15))
    return rows


@pytest.mark.multiproc
@pytest.mark.timeout(2 * TIMEOUT + 60)
@pytest.mark.slow
def test_two_nodes_over_loopback_equal_one_node(tmp_path, reference):
    """Two deepspeed node launchers (what the runner starts on each host of a hostfile), one
    rank each, rendezvous on 127.0.0.1 and train to the end."""
    port = free_port()
    world = {"node-a": [0], "node-b": [0]}
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    cmds = [
        [
            sys.executable,
            "-m",
            "deepspeed.launcher.launch",
            f"--world_info={world_info}",
            f"--node_rank={node}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "--module",
            "ds_twophase.train",
            *train_args(tmp_path),
        ]
        for node in (0, 1)
    ]
    results = run_together(cmds, [rank_env(), rank_env()], port)
    for status, _, err in results:
        assert status == 0, err[-3000:]
    assert comparable(tmp_path) == reference
    # each node launcher ran one rank of a 2-rank job; only global rank 0 printed the epochs
    assert results[0][1].count("epoch 14/14") == 1 and "epoch 14/14" not in results[1][1]


@pytest.mark.multiproc
@pytest.mark.timeout(2 * TIMEOUT + 60)
def test_torchrun_two_processes_equal_deepspeed_launcher(tmp_path, reference):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "ds_twophase.train",
        *train_args(tmp_path),
    ]
    [(status, out, err)] = run_together([cmd], [rank_env()], port)
    assert status == 0, err[-3000:]
    assert comparable(tmp_path) == reference
    assert out.count("epoch 14/14") == 1


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.timeout(2 * TIMEOUT + 60)
def test_slurm_task_script_maps_the_slurm_variables(tmp_path, reference):
    """Two tasks as srun would start them for ``--nodes 1 --ntasks-per-node 2``: only SLURM's
    variables (no RANK/WORLD_SIZE/MASTER_ADDR); launch/slurm_task.sh maps them and the job
    rendezvouses on the allocation's first host."""
    port = free_port_in(20000, 40000)
    job_id = 40000 + port - 20000  # the script's rule gives the port: 20000 + job id % 20000
    cmd = ["launch/slurm_task.sh", sys.executable, "-m", "ds_twophase.train", *train_args(tmp_path)]
    envs = [
        rank_env(
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task),
            SLURM_NTASKS="2",
            SLURM_TASKS_PER_NODE="2",
            SLURM_JOB_NODELIST="localhost",
            SLURM_NODELIST="localhost",
            SLURM_JOB_ID=str(job_id),
        )
        for task in (0, 1)
    ]
    results = run_together([cmd, cmd], envs, port)
    for status, _, err in results:
        assert status == 0, err[-3000:]
    assert comparable(tmp_path) == reference
    assert results[0][1].count("epoch 14/14") == 1 and "epoch 14/14" not in results[1][1]


def test_slurm_task_script_environment():
    """The variable mapping itself, for a 2-node x 8-task job (no training)."""
    env = {
        "PATH": os.environ["PATH"],
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "16",
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "SLURM_JOB_NODELIST": "gpu[03-04]",
        "SLURM_JOB_ID": "123456",
    }
    done = subprocess.run(
        ["launch/slurm_task.sh", "env"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    got = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    expected = {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "LOCAL_SIZE": "8",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu03",
        "MASTER_PORT": str(20000 + 123456 % 20000),
    }
    if subprocess.run(["which", "scontrol"], capture_output=True).returncode == 0:
        expected.pop("MASTER_ADDR")  # scontrol resolves the list on a real cluster
    assert {k: got.get(k) for k in expected} == expected
    outside = subprocess.run(
        ["launch/slurm_task.sh", "env"],
        env={"PATH": os.environ["PATH"]},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert outside.returncode != 0 and "start this through srun" in outside.stderr
