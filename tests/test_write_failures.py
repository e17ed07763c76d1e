"""A run that cannot write (a full disk) or whose newest checkpoint was damaged: one line, the
right exit status, nothing lost, and ``--resume auto`` finishes as if nothing had happened.

One process, in-process (``ds_twophase.train.main``); faults through the documented
``DS_TWOPHASE_DISK_FULL`` hook of :mod:`ds_twophase.faults`. The same faults on a real full
file system (tmpfs), with two ranks, are in ``test_reliability.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import REPO
from _runs import TINY, read_metrics, without_timing

from ds_twophase.faults import DISK_FULL_ENV
from ds_twophase.train import main as train_main
from ds_twophase.trainer import checkpoint

# Six epochs, a checkpoint every two, all of them kept.
SETS = ["--set", "trainer.epochs=6", "--set", "trainer.checkpoint_every=2"]
SETS += ["--set", "trainer.keep_checkpoints=3"]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def train(out: Path, *extra: str) -> int:
    return train_main(
        ["--config", str(REPO / TINY), "--set", f"trainer.output_dir={out}", *SETS, *extra]
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The metrics of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    with pytest.MonkeyPatch.context() as mp:
        from _launch import LAUNCHER_VARS

        for key in LAUNCHER_VARS:
            mp.delenv(key, raising=False)
        assert train(out) == 0
    return read_metrics(out)


def parses_line_by_line(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def disk_full_run(out: Path, where: str, env, capsys) -> str:
    """A run whose write of ``where`` (``metrics:3``, ``checkpoint:4``) fails with ENOSPC: exit 1
    and exactly one error line, which is returned."""
    env.setenv(DISK_FULL_ENV, where)
    assert train(out) == 1
    _, err = capsys.readouterr()
    env.delenv(DISK_FULL_ENV)
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def resume_finishes(out: Path, reference: list[dict], capsys) -> str:
    assert train(out, "--resume", "auto") == 0
    assert without_timing(read_metrics(out)) == without_timing(reference)
    return capsys.readouterr().out


@pytest.mark.timeout(300)
def test_full_disk_while_appending_metrics(tmp_path, capsys, clean_env, reference):
    out = tmp_path / "out"
    line = disk_full_run(out, "metrics:3", clean_env, capsys)
    assert str(out / "metrics.jsonl") in line and "No space left on device" in line
    assert "epoch0002" in line and "--resume auto" in line
    # the half line that went out before the disk filled was cut off again
    assert [r["epoch"] for r in parses_line_by_line(out / "metrics.jsonl")] == [1, 2]
    assert "continuing after epoch 2" in resume_finishes(out, reference, capsys)


@pytest.mark.timeout(300)
def test_full_disk_while_saving_a_checkpoint(tmp_path, capsys, clean_env, reference):
    out = tmp_path / "out"
    line = disk_full_run(out, "checkpoint:4", clean_env, capsys)
    ckpt = out / "checkpoints"
    assert f"checkpoint {ckpt / 'epoch0004'}" in line and "No space left" in line
    assert f"the newest complete checkpoint is {ckpt / 'epoch0002'}" in line
    # the half-written checkpoint gave its space back; the previous one is whole and current
    assert [p.name for _, p in checkpoint.checkpoint_dirs(ckpt)] == ["epoch0002"]
    assert checkpoint.unreadable(ckpt / "epoch0002") is None
    assert (ckpt / "latest").read_text() == "epoch0002"
    parses_line_by_line(out / "metrics.jsonl")
    assert "continuing after epoch 2" in resume_finishes(out, reference, capsys)


@pytest.mark.timeout(300)
def test_truncated_newest_checkpoint_falls_back_to_the_older_one(
    tmp_path, capsys, clean_env, reference
):
    out = tmp_path / "out"
    assert train(out, "--stop-after", "4") == 0
    model = out / "checkpoints" / "epoch0004" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    capsys.readouterr()
    assert train(out, "--resume", "auto") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "epoch0004" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint"), captured.err
    assert "unreadable" in warnings[0] and str(model) in warnings[0]
    assert "continuing after epoch 2" in captured.out
    assert without_timing(read_metrics(out)) == without_timing(reference)


@pytest.mark.timeout(300)
def test_no_readable_checkpoint_left_is_one_line(tmp_path, capsys, clean_env):
    out = tmp_path / "out"
    assert train(out, "--stop-after", "4") == 0
    for model in (out / "checkpoints").glob("epoch*/mp_rank_00_model_states.pt"):
        data = bytearray(model.read_bytes())
        data[len(data) // 3] ^= 0xFF  # one flipped byte: the archive opens, a CRC fails
        model.write_bytes(bytes(data))
    capsys.readouterr()
    assert train(out, "--resume", "auto") == 2
    out_text, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in out_text + err, err
    assert "no complete checkpoint" in lines[0]
    # --resume PATH to a corrupt checkpoint: one line naming it, exit 2
    path = out / "checkpoints" / "epoch0004"
    assert train(out, "--resume", str(path)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(path) in lines[0] and "unreadable" in lines[0], lines
