"""An own loop saved with ds_twophase.save_checkpoint and continued with load_checkpoint takes
the same decisions at the same LRs, with the same hmax, as a loop that was never stopped."""

from __future__ import annotations

import json

import pytest
from _launch import run_plain

EXAMPLE = "examples/own_loop.py"


@pytest.mark.timeout(600)
def test_own_loop_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    for args in (
        ["--out", full],
        ["--out", split, "--stop-after", "4"],  # after the switch: the probe has a vector
        ["--out", split, "--resume"],
    ):
        proc = run_plain([EXAMPLE, "--epochs", "6", *args])
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 5 " in proc.stdout and "epoch 4 " not in proc.stdout  # it did resume
    want = json.loads((full / "records.json").read_text())
    got = json.loads((split / "records.json").read_text())
    assert [r["decision"] for r in want][2:] == ["switch", "decay", "keep", "keep"]
    assert got == want  # lr, decisions and hmax, exactly
    assert sorted(p.name for p in (split / "checkpoints").glob("epoch*")) == [
        "epoch0005",
        "epoch0006",
    ]
