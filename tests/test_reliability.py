"""Faults under the real deepspeed launcher: killed ranks, crashes while saving, non-finite losses,
failing probes and ranks that disagree. Faults are injected through the documented hooks of
ds_twophase.faults and ds_twophase.probe (environment variables), never by editing code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from _launch import REPO, free_port, remove_shm_buffers, run_deepspeed, run_group
from _runs import TINY, final_params, read_metrics, without_timing

from ds_twophase.trainer import checkpoint

# Bigger epochs than the tiny default so a kill lands while training, 10 epochs, checkpoints
# every 2.
RELIABLE = [
    "--set",
    "trainer.dataset.train_size=4000",
    "--set",
    "trainer.epochs=10",
    "--set",
    "trainer.checkpoint_every=2",
    "--set",
    "trainer.keep_checkpoints=3",
]

pytestmark = [pytest.mark.multiproc]


def train(out: Path, *extra: str, env: dict | None = None, timeout: float = 300):
    args = ["ds_twophase.train", "--config", TINY, "--set", f"trainer.output_dir={out}", *extra]
    return run_deepspeed(args, module=True, env=env, timeout=timeout)


def ranks_of(out: Path) -> list[psutil.Process]:
    """Live processes of a run, found by its unique output directory on their command line."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(out) in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


def assert_same_run(a: Path, b: Path) -> None:
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of the RELIABLE settings."""
    out = tmp_path_factory.mktemp("reference")
    proc = train(out, *RELIABLE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_metrics(out)) == 10
    return out


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_killed_rank_ends_the_job_and_resume_matches(tmp_path, reference):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(port),
        "--module",
        "ds_twophase.train",
        "--config",
        TINY,
        "--set",
        f"trainer.output_dir={out}",
        *RELIABLE,
    ]
    job = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(read_metrics(out)) < 5 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, "the run ended before it could be killed"
        victim = [p for p in ranks_of(out) if "--local_rank=1" in " ".join(p.cmdline())]
        assert len(victim) == 1
        victim[0].send_signal(signal.SIGKILL)
        killed_after = len(read_metrics(out))
        job.wait(timeout=120)  # the launcher notices the dead rank and ends the job
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        remove_shm_buffers(port)
    time.sleep(1)
    assert ranks_of(out) == [], "a rank outlived the job"
    assert killed_after < 10
    resumed = train(out, *RELIABLE, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing after epoch" in resumed.stdout
    assert_same_run(reference, out)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_crash_while_saving_falls_back_to_previous_checkpoint(tmp_path, reference):
    out = tmp_path / "crashed"
    crashed = train(out, *RELIABLE, env={"DS_TWOPHASE_CRASH_IN_SAVE": "4"})
    assert crashed.returncode != 0
    ckpt = out / "checkpoints"
    # DeepSpeed already pointed "latest" at the unfinished checkpoint
    assert (ckpt / "latest").read_text().strip() == "epoch0004"
    assert not (ckpt / "epoch0004" / "COMPLETE").exists()
    assert ranks_of(out) == []
    resumed = train(out, *RELIABLE, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch0004 is incomplete" in resumed.stderr
    assert "resume: continuing after epoch 2" in resumed.stdout
    assert_same_run(reference, out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_in_first_save_refuses_to_restart_silently(tmp_path):
    out = tmp_path / "first"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_TWOPHASE_CRASH_IN_SAVE="2")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "ds_twophase.train",
        "--config",
        TINY,
        "--set",
        f"trainer.output_dir={out}",
        "--set",
        "trainer.checkpoint_every=2",
        "--set",
        "trainer.epochs=4",
    ]
    assert run_group(cmd, env=env, cwd=REPO, timeout=200).returncode != 0
    env.pop("DS_TWOPHASE_CRASH_IN_SAVE")
    again = run_group(cmd + ["--resume", "auto"], env=env, cwd=REPO, timeout=200)
    assert again.returncode == 2
    assert "no complete checkpoint" in again.stderr
    assert len(read_metrics(out)) == 2  # nothing was retrained or overwritten


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "precision",
    [
        [],
        pytest.param(
            [
                "--set",
                'bf16={"enabled": true}',
                "--set",
                "zero_optimization.stage=1",
                "--set",
                "zero_allow_untested_optimizer=true",
            ],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["fp32-stage0", "bf16-zero1"],
)
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, precision):
    extra = ["--set", "trainer.checkpoint_every=1", "--set", "trainer.epochs=4", *precision]
    proc = train(tmp_path, *extra, env={"DS_TWOPHASE_NAN_LOSS": "3:0:1"})  # rank 1 only
    # every rank stops with 1 (the process group is ended before exit: no teardown abort)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert "error: epoch 3: training loss is nan" in proc.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    ckpt = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["epoch0001", "epoch0002"]
    assert (ckpt / "latest").read_text().strip() == "epoch0002"
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(300)
def test_skip_nonfinite_and_failing_rank0_probe_keep_training(tmp_path):
    env = {"DS_TWOPHASE_NAN_LOSS": "3:0:1", "DS_TWOPHASE_PROBE_FAIL": "rank0"}
    cap = ("--set", "scheduler.params.max_exploration_epochs=3")  # the switch is due at 3
    proc = train(
        tmp_path,
        "--set",
        "trainer.on_nonfinite_loss=skip",
        "--set",
        "trainer.epochs=6",
        *cap,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_micro_batches"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert all(r["train_loss"] is not None for r in rows)
    # every probe fails: no decision at 3 and 4; the third failure (probe.max_failures = 3)
    # forces the switch at 5 instead of leaving the run at its peak LR; 6 makes no decision
    decisions = [(r["decision"], r["phase"]) for r in rows]
    assert decisions == [("none", "exploration")] * 2 + [("skipped", "exploration")] * 2 + [
        ("switch", "convergence"),
        ("skipped", "convergence"),
    ]
    assert all(r["hmax"] is None for r in rows)
    assert all("injected probe failure" in r["probe_error"] for r in rows[2:])
    assert "probe.max_failures" in rows[4]["warning"]
    assert proc.stderr.count("warning: epoch 4:") == 1  # once, by rank 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sharded_probe_failure_on_rank1_then_rank_disagreement_stops(tmp_path):
    env = {"DS_TWOPHASE_PROBE_FAIL": "rank1@2", "DS_TWOPHASE_DESYNC_AT": "5"}
    cap = ("--set", "scheduler.params.max_exploration_epochs=3")  # the first probe at 3
    proc = train(tmp_path, "--set", "scheduler.params.probe.mode=sharded", *cap, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1 from each rank
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # epoch 5's decision is where they differ
    assert all(r["decision"] == "skipped" and "rank 1" in r["probe_error"] for r in rows[2:])
    assert "ranks disagree on the LR schedule after epoch 5" in proc.stderr
    assert ranks_of(tmp_path) == []


def busy_cores() -> list[subprocess.Popen]:
    """One busy-looping process per core, the concurrent load the exit abort needed."""
    loop = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_twenty_runs_under_load_all_exit_zero(tmp_path):
    """The exit abort (a gloo thread freeing the last collective's tensors while the
    interpreter finalised; 6 of 25 runs before) never happens: 20 runs in a row, each core
    busy with another process."""
    load = busy_cores()
    try:
        for i in range(20):
            out = tmp_path / f"run{i}"
            proc = train(out, "--set", "trainer.epochs=2", timeout=400)
            assert proc.returncode == 0, f"run {i}: {proc.stderr[-3000:]}"
            assert "terminate called" not in proc.stdout + proc.stderr, f"run {i}"
            assert "done: 2 epochs" in proc.stdout
    finally:
        for p in load:
            p.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stopped_rank_ends_the_job_within_the_timeout_and_resume_matches(tmp_path, reference):
    """Rank 1 stops answering (SIGSTOP) in epoch 5: with a 1-minute collective timeout rank 0
    ends with one line naming the place, the launcher ends the stopped rank, nothing is left,
    and --resume auto finishes equal to an uninterrupted run."""
    out = tmp_path / "stopped"
    timeout = ["--set", "trainer.collective_timeout_minutes=1"]
    # the subprocess limit is the bound: 1 minute of timeout, 30 s for the launcher to end the
    # stopped rank, start-up
    proc = train(out, *RELIABLE, *timeout, env={"DS_TWOPHASE_FREEZE_AT": "5:3:1"}, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: rank 0: a collective failed at epoch 5, optimizer step 5")
    assert "Timed out" in errors[0] and "--resume auto" in errors[0]
    assert "Traceback" not in proc.stderr
    time.sleep(1)
    assert ranks_of(out) == [], "a rank outlived the job"
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4]
    resumed = train(out, *RELIABLE, *timeout, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing after epoch 4" in resumed.stdout
    assert_same_run(reference, out)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs mounted for the test (root only; skipped where mounting is not allowed):
    two checkpoints of the tiny model (about 220 KiB each) fit, a third does not. Yields the
    mount point and a function that remounts it with another size in MiB."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def resize(mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_full_disk_stops_with_one_line_and_resumes(small_disk, reference):
    """Two ranks writing into a 600 KiB tmpfs: the checkpoint save that fills it stops the run
    with one line naming the path; the previous checkpoint and metrics.jsonl stay readable;
    after remounting larger, --resume auto finishes equal to an uninterrupted run."""
    mount, resize = small_disk
    out = mount / "run"
    proc = train(out, *RELIABLE)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert any(line.startswith("error: writing ") for line in errors), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    ckpt = out / "checkpoints"
    kept = checkpoint.newest_complete(ckpt, verify=True)
    assert kept is not None, "no complete checkpoint fit: make the disk larger"
    assert f"the newest complete checkpoint is {kept[1]}" in errors[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["epoch"] < 10
    resize(64)
    resumed = train(out, *RELIABLE, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(reference, out)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
@pytest.mark.timeout(900)
def test_stopped_rank_on_nccl_is_ended_by_the_watchdog(tmp_path):
    """On two GPUs (NCCL) a rank that stops answering: the watchdog ends the waiting rank after
    trainer.collective_timeout_minutes (TORCH_NCCL_ASYNC_ERROR_HANDLING=3, set by ds_twophase),
    the launcher ends the stopped one, nothing is left, and the run resumes."""
    out = tmp_path / "nccl"
    timeout = ["--set", "trainer.collective_timeout_minutes=1"]
    env = {"DS_TWOPHASE_FREEZE_AT": "5:3:1", "CUDA_VISIBLE_DEVICES": "0,1"}
    proc = train(out, *RELIABLE, *timeout, env=env, timeout=300)
    assert proc.returncode != 0
    time.sleep(1)
    assert ranks_of(out) == [], "a rank outlived the job"
    resumed = train(
        out, *RELIABLE, *timeout, "--resume", "auto", env={"CUDA_VISIBLE_DEVICES": "0,1"}
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing after epoch 4" in resumed.stdout
