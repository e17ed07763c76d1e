"""Pre-emption and resuming on another number of ranks, with real ranks under real launchers.

SIGTERM mid-epoch (to one rank, or to ``launch/single_node.sh`` as a cluster would) must leave a
complete checkpoint and exit status 75, leave no process behind, and ``--resume auto`` must end
where an uninterrupted run ends: the same metrics (timings aside) and the same parameters.
A run stopped with ``--stop-after`` on 2 ranks continues on 1 rank and the other way round,
carrying the schedule state over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
from _launch import REPO, kill_group, run_deepspeed, run_plain, start_group
from _runs import TINY, RunDir, without_timing

from ds_twophase.trainer import checkpoint
from ds_twophase.trainer.preempt import EXIT_RESUMABLE

TIMEOUT = 300
pytestmark = pytest.mark.multiproc


def train(run: RunDir, *extra: str, env: dict[str, str] | None = None, ranks: int = 2):
    """The tiny config into ``run`` on ``ranks`` ranks (1: a plain ``python -m``)."""
    args = ["--config", TINY, *run.flag, *extra]
    if ranks == 1:
        assert not env
        return run_plain(["-m", "ds_twophase.train", *args], timeout=TIMEOUT)
    return run_deepspeed(
        ["ds_twophase.train", *args], module=True, num_ranks=ranks, env=env, timeout=TIMEOUT
    )


def same_params(a: RunDir, b: RunDir) -> bool:
    pa, pb = a.final_params(), b.final_params()
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """The tiny config on 2 ranks, uninterrupted (shared by the tests of this module)."""
    run = RunDir(tmp_path_factory.mktemp("reference"))
    proc = train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["epoch"] for r in run.metrics()] == list(range(1, 15))
    return run


@pytest.mark.timeout(3 * TIMEOUT)
def test_sigterm_on_one_rank_mid_epoch_then_resume_equals_uninterrupted(tmp_path, reference):
    # Rank 1 alone gets SIGTERM after micro-batch 2 of epoch 6 (of 5 per epoch): both ranks
    # agree to stop after that optimizer step and save 3 micro-batches into epoch 6.
    run = RunDir(tmp_path)
    proc = train(run, env={"DS_TWOPHASE_SIGNAL_AT": "6:2:1"})
    assert proc.returncode == EXIT_RESUMABLE, proc.stderr[-3000:]
    assert "preempted: stopped by a signal on another rank after 3 micro-batch(es) of epoch 6" in (
        proc.stdout
    )
    newest = checkpoint.newest_complete(run.path / "checkpoints")
    assert newest is not None and newest[1].name == "epoch0005+mb000003"
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3, 4, 5]

    proc = train(run, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: 3 micro-batch(es) into epoch 6; continuing after epoch 5 from" in proc.stdout
    assert without_timing(run.metrics()) == without_timing(reference.metrics())
    assert same_params(run, reference)


def _wait_for_rows(run: RunDir, proc: subprocess.Popen, rows: int) -> None:
    while len(run.metrics()) < rows:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT)
def test_sigterm_to_launch_script_reaches_every_rank_and_leaves_no_process(tmp_path):
    run = RunDir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = ["bash", "launch/single_node.sh", "2", TINY, *run.flag]
    proc = start_group(cmd, env=env, cwd=REPO)
    try:
        _wait_for_rows(run, proc, 2)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 4, tree  # the deepspeed runner, its launcher and the two ranks
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        kill_group(proc)
    assert proc.returncode == EXIT_RESUMABLE, err[-3000:]
    assert "preempted: stopped by SIGTERM" in out
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == [], f"left behind: {alive}"
    newest = checkpoint.newest_complete(run.path / "checkpoints")
    assert newest is not None and newest[0] >= 2
    # (that such a checkpoint resumes exactly is the test above)


STOP = 7
OWN = ("resume:", "epoch ", "done:", "stopped ", "preempted:", "warning:", "error:")


def own_lines(stdout: str) -> list[str]:
    """The trainer's own lines (not DeepSpeed's or the launcher's log lines)."""
    return [line for line in stdout.splitlines() if line.startswith(OWN)]


def _stop_state(run: RunDir) -> dict:
    return json.loads((run.path / "checkpoints" / "epoch0007" / "ds_twophase.json").read_text())


def _check_continued(before: list[dict], run: RunDir, saved: dict) -> None:
    """The schedule state at the stop carried over: nothing before it retrained, the next
    epoch's phase and LR follow on from the stop, and the run finished."""
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == list(range(1, 15))
    assert rows[:STOP] == before  # the rows of the stopped run, untouched
    at_stop, after = rows[STOP - 1], rows[STOP]
    assert saved["scheduler"]["decision"]["phase"] == at_stop["phase"] == "convergence"
    assert after["phase"] == "convergence"  # not a fresh warmup/exploration
    factor = 0.5 if after["decision"] == "decay" else 1.0
    assert after["lr"] == pytest.approx(at_stop["lr"] * factor, rel=1e-12)
    assert (run.path / "summary.json").is_file()
    end = checkpoint.read_state(run.path / "checkpoints" / "epoch0014")["scheduler"]
    # the switch made before the stop is the switch of the whole run
    assert end["decision"]["plateau_epoch"] == saved["scheduler"]["decision"]["plateau_epoch"]
    assert end["decision"]["num_decays"] >= saved["scheduler"]["decision"]["num_decays"]


@pytest.mark.timeout(3 * TIMEOUT)
@pytest.mark.slow
def test_resume_two_ranks_on_one(tmp_path):
    run = RunDir(tmp_path)
    proc = train(run, "--stop-after", str(STOP))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, saved = run.metrics(), _stop_state(run)
    assert saved["world_size"] == 2

    proc = train(run, "--resume", "auto", ranks=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = own_lines(proc.stdout)[0]
    assert first.startswith("resume: world size changed from 2 to 1 rank(s)"), proc.stdout
    assert "micro-batch 100 x accumulation 2" in first
    _check_continued(before, run, saved)


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT)
def test_resume_one_rank_on_two(tmp_path):
    run = RunDir(tmp_path)
    proc = train(run, "--stop-after", str(STOP), ranks=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, saved = run.metrics(), _stop_state(run)
    assert saved["world_size"] == 1

    proc = train(run, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = own_lines(proc.stdout)
    assert lines[0].startswith("resume: world size changed from 1 to 2 rank(s)"), proc.stdout
    assert "micro-batch 100 x accumulation 1" in lines[0]
    _check_continued(before, run, saved)


def test_mid_epoch_checkpoint_refuses_another_world_size(tmp_path):
    """A mid-epoch checkpoint names the fix instead of continuing an epoch ordered for another
    number of ranks (checked on the saved state, without training)."""
    from ds_twophase.config.batch import Batch
    from ds_twophase.errors import ConfigError
    from ds_twophase.trainer.preempt import world_size_note

    batch = Batch(train=200, micro=100, gas=2, world_size=1)
    state = {"world_size": 2, "partial": {"micro_batches": 3}}
    with pytest.raises(ConfigError, match="saved mid-epoch on 2 rank"):
        world_size_note(state, "ck", zero_stage=0, batch=batch)
    with pytest.raises(ConfigError, match="under ZeRO stage 1"):
        world_size_note({"world_size": 2}, "ck", zero_stage=1, batch=batch)
    assert world_size_note({"world_size": 1}, "ck", zero_stage=2, batch=batch) == ""
    assert "from 2 to 1" in world_size_note({"world_size": 2}, "ck", zero_stage=0, batch=batch)


def test_checkpoint_minutes_must_be_positive_or_null():
    from ds_twophase.config import load_config, validate_config
    from ds_twophase.errors import ConfigError

    for bad, problem in (
        ("0", "must be a number > 0 or null, got 0"),
        ("-1", "must be a number > 0 or null, got -1"),
        ('"soon"', "expected a number or null, got string 'soon'"),
    ):
        raw = load_config(TINY, [f"trainer.checkpoint_minutes={bad}"])
        with pytest.raises(ConfigError, match=rf"^trainer\.checkpoint_minutes: {problem}"):
            validate_config(raw, world_size=2)
    raw = load_config(TINY, ["trainer.checkpoint_minutes=null"])
    assert validate_config(raw, world_size=2).trainer.checkpoint_minutes is None


@pytest.mark.timeout(TIMEOUT)
def test_checkpoint_minutes_saves_at_epoch_ends(tmp_path):
    """With a tiny ``checkpoint_minutes`` every epoch end is due (the tiny config's
    ``checkpoint_every`` 4 alone would save none of epochs 1-2)."""
    run = RunDir(tmp_path)
    proc = train(
        run,
        "--set",
        "trainer.checkpoint_minutes=0.0001",
        "--set",
        "trainer.keep_checkpoints=5",
        "--stop-after",
        "3",
        ranks=1,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = checkpoint.checkpoint_dirs(run.path / "checkpoints")
    assert [epoch for epoch, _ in dirs] == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_only_set_a_flag_while_installed(sig):
    from ds_twophase.trainer.preempt import StopFlag

    before = signal.getsignal(sig)
    with StopFlag() as stop:
        assert not stop.requested and not stop.agreed()
        os.kill(os.getpid(), sig)  # a real signal; the process goes on
        assert stop.requested and stop.agreed() and stop.name() == sig.name
    assert signal.getsignal(sig) is before
