"""Run a script under the real ``deepspeed`` launcher for multi-process tests (gloo on CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_deepspeed(
    args: list[str],
    *,
    num_ranks: int = 2,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    module: bool = False,
) -> subprocess.CompletedProcess:
    """Launch ``args`` (a script path and its arguments, or a module with ``module=True``) on
    ``num_ranks`` CPU ranks through the ``deepspeed`` launcher; returns the finished process with
    stdout and stderr captured. A hang fails the test after ``timeout`` seconds."""
    full_env = dict(os.environ)
    full_env["OMP_NUM_THREADS"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), full_env.get("PYTHONPATH", "")] if p
    )
    full_env.update(env or {})
    launcher = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_ranks),
        "--master_port",
        str(free_port()),
    ]
    if module:
        launcher.append("--module")
    port = launcher[launcher.index("--master_port") + 1]
    try:
        return run_group(launcher + [str(a) for a in args], env=full_env, cwd=cwd, timeout=timeout)
    finally:
        remove_shm_buffers(port)


# Variables a launcher sets; a "plain python" run must see none of them.
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "SLURM_PROCID",
)


def run_plain(args: list[str], *, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python args...`` in the repository as a user would without any launcher (no rank
    variables in its environment), output captured; a hang fails after ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return run_group([sys.executable, *map(str, args)], env=env, cwd=REPO, timeout=timeout)


def remove_shm_buffers(port: str | int) -> None:
    """Remove DeepSpeed's CPU all-reduce buffers of the job on ``port`` (ranks killed before they
    could release them leave them in /dev/shm, where they hold RAM)."""
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        path.unlink(missing_ok=True)


def start_group(cmd: list[str], *, env: dict[str, str], cwd: Path | str | None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (its pid is the group id), output captured."""
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd or REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process left in ``proc``'s group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_group(
    cmd: list[str], *, env: dict[str, str], cwd: Path | str | None, timeout: float
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (launcher and
    ranks alike) and raise ``subprocess.TimeoutExpired``, so no rank outlives a failed test."""
    proc = start_group(cmd, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
