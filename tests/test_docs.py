"""The code in the docs runs as written and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_probe_doc_example_runs_and_warm_start_needs_fewer_hvps(capsys):
    (code,) = python_blocks(DOCS / "probe.md")
    ns: dict = {}
    exec(compile(code, "docs/probe.md", "exec"), ns)
    assert "hmax=" in capsys.readouterr().out
    result, again, outcome = ns["result"], ns["again"], ns["outcome"]
    assert result.converged and again.converged
    assert again.iterations < result.iterations
    assert abs(again.value - result.value) <= 1e-3 * abs(result.value)
    assert outcome.ok
