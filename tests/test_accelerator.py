"""CPU runs choose DeepSpeed's CPU accelerator themselves: none of DeepSpeed's "could not detect
a GPU" lines, while an explicit choice, another accelerator and real output are left alone."""

from __future__ import annotations

import pytest
from _launch import run_plain
from _runs import TINY

from ds_twophase.accelerator import has_accelerator, without_op_build_lines

ALARMS = ("unable to detect", "No CUDA runtime is found", "built successfully")

cpu_only = pytest.mark.skipif(has_accelerator(), reason="this machine has an accelerator")


@cpu_only
def test_a_cpu_run_prints_no_accelerator_warnings(tmp_path, monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    out = tmp_path / "out"
    proc = run_plain(
        ["-m", "ds_twophase.train", "--config", TINY, "--set", "trainer.epochs=2"]
        + ["--set", f"trainer.output_dir={out}"]
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert [alarm for alarm in ALARMS if alarm in text] == []
    assert "epoch 2/2" in proc.stdout


@cpu_only
def test_an_explicit_choice_and_other_accelerators_are_left_to_deepspeed(tmp_path, monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    code = (
        "import os, sys\n"
        "from ds_twophase.accelerator import select_cpu_accelerator\n"
        "print(select_cpu_accelerator(), os.environ.get('DS_ACCELERATOR'))\n"
    )
    assert run_plain(["-c", code]).stdout.split() == ["True", "cpu"]
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")  # the user's word wins, even a wrong one
    assert run_plain(["-c", code]).stdout.split() == ["False", "cuda"]
    monkeypatch.delenv("DS_ACCELERATOR")
    # An installed vendor package that DeepSpeed would probe: detection stays DeepSpeed's.
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text("")
    probe = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + code
    assert run_plain(["-c", probe]).stdout.split() == ["False", "None"]


def test_only_the_op_build_line_is_dropped(capsys):
    with without_op_build_lines():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("DeepSpeed op failed to build: g++ not found")
    assert capsys.readouterr().out == "DeepSpeed op failed to build: g++ not found\n"
