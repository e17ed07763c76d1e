"""bench/study.py: the accuracy study's stale-run refusal, duplicate linking and intervals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _launch import REPO

sys.path.insert(0, str(REPO / "bench"))
from study import (  # noqa: E402
    RunSpec,
    StaleRun,
    gap_closed_ci,
    link_duplicates,
    run_all,
    run_status,
)

from ds_twophase.config import load_config  # noqa: E402

TINY = REPO / "configs" / "tiny" / "mnist1d_2rank.json"


def fake_run(spec: RunSpec, work, finished: bool) -> None:
    """What the trainer leaves in a run directory: the resolved config (and the summary)."""
    out = work / spec.name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(load_config(spec.config, spec.overrides(work))))
    if finished:
        (out / "summary.json").write_text("{}")


def test_a_run_of_another_config_is_refused(tmp_path):
    spec = RunSpec("grid/a", TINY, ["optimizer.params.lr=0.5", "trainer.seed=0"])
    assert run_status(spec, tmp_path) == "new"
    fake_run(spec, tmp_path, finished=False)
    assert run_status(spec, tmp_path) == "partial"
    (tmp_path / "grid" / "a" / "summary.json").write_text("{}")
    assert run_status(spec, tmp_path) == "done"
    # bookkeeping keys may differ (checkpoint cadence, progress bar)
    relaxed = RunSpec("grid/a", TINY, [*spec.sets, "trainer.checkpoint_every=1"])
    assert run_status(relaxed, tmp_path) == "done"
    changed = RunSpec("grid/a", TINY, ["optimizer.params.lr=0.25", "trainer.seed=0"])
    with pytest.raises(StaleRun, match=r"optimizer.params.lr: 0.5 -> 0.25"):
        run_status(changed, tmp_path)
    # the runner refuses before training anything
    with pytest.raises(StaleRun):
        run_all([changed], tmp_path, jobs=1)
    assert not (tmp_path / "grid" / "a.log").exists()


def test_identical_configs_share_one_run(tmp_path):
    a = RunSpec("final/s1", TINY, ["trainer.seed=1"])
    b = RunSpec(
        "studies/probe/200/s1", TINY, ["scheduler.params.decay_factor=0.5", "trainer.seed=1"]
    )
    c = RunSpec(
        "studies/probe/100/s1", TINY, ["scheduler.params.decay_factor=0.3", "trainer.seed=1"]
    )
    target = link_duplicates([a, b, c], tmp_path)
    assert target == {a.name: a, b.name: a, c.name: c}  # the tiny config's decay_factor is 0.5
    assert (tmp_path / b.name).is_symlink()
    assert (tmp_path / b.name).resolve() == (tmp_path / a.name).resolve()
    assert run_status(b, tmp_path) == "alias"


def test_gap_closed_interval_known_cases():
    # a row equal to the small batch on every seed closes the whole gap
    gap, glo, ghi = gap_closed_ci([0.99] * 5, [0.97, 0.98, 0.975, 0.97, 0.98], [0.99] * 5)
    assert gap == pytest.approx(1.0) and glo == pytest.approx(1.0) and ghi == pytest.approx(1.0)
    # halfway between two rows with no spread: exactly half, however the seeds are resampled
    gap, glo, ghi = gap_closed_ci([0.98] * 5, [0.97] * 5, [0.99] * 5)
    assert gap == pytest.approx(0.5) and glo == pytest.approx(0.5) and ghi == pytest.approx(0.5)


def test_results_are_regenerated_from_run_directories_alone(tmp_path):
    import accuracy

    rng = np.random.default_rng(0)

    def finish(spec: RunSpec, summary: dict) -> None:
        fake_run(spec, tmp_path, finished=False)
        base = {
            "plateau_epoch": 10,
            "switch_epoch": 14,
            "switch_forced": False,
            "decay_epochs": [20, 30],
            "final_lr": 0.2,
            "probe_share": 0.02,
            "best_val_accuracy": 0.95,
            "best_val_epoch": 50,
            "commit": "c" * 40,
            "commit_dirty": False,
        }
        (tmp_path / spec.name / "summary.json").write_text(json.dumps({**base, **summary}))

    grid = accuracy.grid_specs(accuracy.ROWS)
    for spec in grid:  # the validation accuracy peaks at lr 0.8 (0.1 for the small batch)
        lr = float(spec.sets[0].split("=")[1])
        best = 0.1 if "small_batch" in spec.name else 0.8
        finish(spec, {"final_val_accuracy": 0.9 - abs(np.log2(lr / best)) / 100})
    chosen = {row: accuracy.choose(tmp_path, row) for row in accuracy.ROWS}
    assert chosen["large_batch_step"]["lr"] == 0.8 and chosen["small_batch"]["lr"] == 0.1
    assert chosen["lars_step"] == {"lr": 0.8, "eta": 0.001, "val_accuracy": 0.9, "edge": False}
    level = {"small_batch": 0.99, "large_batch_step": 0.97}
    for spec in accuracy.final_specs(accuracy.ROWS, chosen):
        row = spec.name.split("/")[1]
        acc = level.get(row, 0.98) + rng.normal(scale=0.001)
        finish(spec, {"test_accuracy": acc, "final_val_accuracy": 0.9})
    studies = accuracy.study_specs(chosen["two_phase_lars"])
    finals = accuracy.final_specs(accuracy.ROWS, chosen)
    target = link_duplicates(finals + studies, tmp_path)
    for spec in studies:
        if target[spec.name] is spec:
            finish(spec, {"test_accuracy": 0.98, "final_val_accuracy": 0.9})
    text = accuracy.render(tmp_path, "python bench/accuracy.py")
    assert "| `lars_step` | 0.8 | 0.001 | 90.00 |" in text and "**chosen**" in text
    assert "(n=5)" in text and "gap closed" in text.lower()
    assert "Seeds [1, 2, 3, 4, 5]: differences (points)" in text
    # studies equal to the final runs (probe 128, ratio 0.3333, decay 0.5) read those runs
    assert text.count("| probe_batch | 128 | 98.") == 1
    assert "| 2, 2, 2, 2, 2 | 0.2, 0.2, 0.2, 0.2, 0.2 |" in text  # decays, then the final LRs
    assert "no finished runs" not in text and "c" * 40 in text


def test_regenerated_results_keep_the_reading_written_by_hand(tmp_path):
    from common import BY_HAND, keep_by_hand

    assert keep_by_hand("tables\n", "") == "tables\n"  # no file yet
    old = f"old tables\n\n{BY_HAND}\nThe ordering holds because ...\n"
    text = keep_by_hand("new tables\n", old)
    assert text.startswith("new tables\n") and "old tables" not in text
    assert text.endswith(f"{BY_HAND}\nThe ordering holds because ...\n")
