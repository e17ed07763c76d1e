"""A refusal every rank takes before the process group exists still shows rank 0's reason:
the launcher ends the whole job at the first non-zero exit, so no rank may exit first."""

from __future__ import annotations

import pytest
from _launch import REPO, run_deepspeed


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_no_rank_exits_before_rank_zero_said_why():
    proc = run_deepspeed([REPO / "tests" / "scripts" / "refuse_together.py", "8"], timeout=150)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-3000:]
    assert "error: rank 0 says why" in both, both[-3000:]
