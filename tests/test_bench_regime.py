"""bench/regime.py: the regime search's LR choice, grid extension, penalty and report, on fake
run directories (what the trainer and the timed runner leave behind)."""

from __future__ import annotations

import json
import sys

from _launch import REPO

sys.path.insert(0, str(REPO / "bench"))
import regime  # noqa: E402
from regime import Regime, assess, report, specs_to_run  # noqa: E402
from study import RunSpec  # noqa: E402

from ds_twophase.config import load_config  # noqa: E402

R = Regime("r", train=6144, batch=1024, epochs=150)


def fake(spec: RunSpec, work, val: float, test: float, cpu_s: float = 120.0) -> None:
    """A finished run: resolved config, summary and the runner's CPU record."""
    out = work / spec.name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(load_config(spec.config, spec.overrides(work))))
    summary = {"final_val_accuracy": val, "test_accuracy": test}
    (out / "summary.json").write_text(json.dumps(summary))
    (work / f"{spec.name}.cpu.json").write_text(json.dumps({"cpu_s": cpu_s, "wall_s": 999.0}))


def fill(work, val_by_factor: dict[float, float]) -> None:
    """Small batch at 0.98 test; large at each factor with the given validation accuracy and a
    test accuracy 0.01 below it (so the chosen LR shows in the penalty)."""
    for seed in regime.SEEDS:
        fake(R.small(seed), work, 0.985, 0.98, cpu_s=180.0)
        for f, val in val_by_factor.items():
            fake(R.large(f, seed), work, val, val - 0.01)


def test_regime_shape_says_steps_and_whether_every_sample_is_used():
    assert (R.steps_per_epoch, R.uses_every_sample) == (6, True)
    assert not Regime("x", 4000, 1024, 200).uses_every_sample  # 3 steps of 1024 see 3,072
    sets = R.large(1.0, 1).sets
    assert "optimizer.params.lr=0.8" in sets  # 0.1 * 1024 / 128
    assert "trainer.dataset.train_size=14144" in sets  # 6,144 trained + 8,000 held out
    assert "scheduler.params.warmup_epochs=5" in sets  # E/30


def test_lr_chosen_on_validation_and_penalty_on_test(tmp_path):
    fill(tmp_path, {0.25: 0.95, 0.5: 0.97, 1.0: 0.96, 2.0: 0.90})
    a = assess(R, tmp_path)
    assert a["complete"] and (a["done"], a["total"]) == (15, 15)
    assert a["lr"] == 0.4 and not a["edge"]
    assert abs(a["penalty"] - (98.0 - 96.0)) < 1e-9
    assert abs(a["cpu_min_small"] - 3.0) < 1e-9 and abs(a["cpu_min_large"] - 2.0) < 1e-9
    text = report_for(tmp_path)
    assert "| 6,144 | standard | 1024 | 6 | 900 | yes | 150 | 15/15 | 0.4 (" in text
    assert "**2.00**" in text  # >= 1.5: qualifies


def test_best_on_an_edge_extends_the_grid_before_choosing(tmp_path):
    fill(tmp_path, {0.25: 0.95, 0.5: 0.96, 1.0: 0.97, 2.0: 0.975})
    names = [s.name for s in specs_to_run(R, tmp_path)]
    assert [n for n in names if "lr3.2" in n] == [f"r/large/lr3.2/s{s}" for s in regime.SEEDS]
    a = assess(R, tmp_path)
    assert not a["complete"] and a["total"] == 18
    assert "(provisional)" in report_for(tmp_path)


def test_unfinished_regime_reports_what_is_done(tmp_path):
    fake(R.small(1), tmp_path, 0.985, 0.98)
    a = assess(R, tmp_path)
    assert (a["done"], a.get("penalty")) == (1, None)
    assert "| 1/15 | - (none finished) | 98.00 (n=1) | - | - |" in report_for(tmp_path)


def report_for(work) -> str:
    return report(work, [R])


def test_the_hard_spec_follows_the_protocol():
    """bench/studies/mnist1d_hard.json: the seven rows of issue 20 plus issue 21's two rules (its
    floor a study on each rule), on the regime's configs, 2 tuning and 8 final seeds, LARS grids
    crossed with eta 0.001 and 0.01."""
    from study_spec import grid_points, load_spec

    spec = load_spec(REPO / "bench" / "studies" / "mnist1d_hard.json")
    names = [r.name for r in spec.rows]
    assert names[:7] == [
        "small_batch", "large_batch_step", "lars_step", "two_phase", "two_phase_lars",
        "two_phase_lars_late_step", "two_phase_lars_loss_only",
    ]  # fmt: skip
    assert (len(spec.tuning_seeds), len(spec.final_seeds)) == (2, 8)
    assert (spec.small, spec.large, spec.reference) == (
        "small_batch",
        "large_batch_step",
        "lars_step",
    )
    for row in spec.rows:
        assert row.config.parent.name == "mnist1d_hard", row.name
        if "lars" in row.config.stem:
            assert row.grid["optimizer.params.trust_coefficient"] == [0.001, 0.01], row.name
    significant = {r.name: r for r in spec.rows if "rise=significant" in " ".join(r.sets)}
    assert set(significant) == {"tpl_significant", "tpl_significant_probe_loss"}
    for row in significant.values():
        assert row.grid["scheduler.params.rise_z"] == [1, 2]
    assert (
        "scheduler.params.rise_loss=probe_batch" in significant["tpl_significant_probe_loss"].sets
    )
    assert not any("rise_loss" in s for s in significant["tpl_significant"].sets)  # epoch loss
    floors = {st.row: st for st in spec.studies}
    assert set(floors) == {"two_phase_lars", *significant}  # each rule with and without a floor
    for study in floors.values():
        assert (study.key, study.values) == ("scheduler.params.min_lr_ratio", [0.01, 0.1])
    assert sum(len(grid_points(r.grid)) for r in spec.rows) == 108  # 216 tuning runs


def test_a_qualifying_regime_ends_the_search(tmp_path):
    fill(tmp_path, {0.25: 0.95, 0.5: 0.97, 1.0: 0.96, 2.0: 0.90})  # penalty 2.0, complete
    assert regime.qualifies(assess(R, tmp_path))
    other = Regime("r2", train=3072, batch=512, epochs=150)
    assert not regime.qualifies(assess(other, tmp_path))  # nothing run
