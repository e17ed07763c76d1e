"""bench/study.py: the accuracy study's stale-run refusal, duplicate linking and intervals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _launch import REPO

sys.path.insert(0, str(REPO / "bench"))
from study import (  # noqa: E402
    RunSpec,
    StaleRun,
    gap_closed_ci,
    link_duplicates,
    read_run,
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


def test_regenerated_results_keep_the_reading_written_by_hand(tmp_path):
    from common import BY_HAND, keep_by_hand

    assert keep_by_hand("tables\n", "") == "tables\n"  # no file yet
    old = f"old tables\n\n{BY_HAND}\nThe ordering holds because ...\n"
    text = keep_by_hand("new tables\n", old)
    assert text.startswith("new tables\n") and "old tables" not in text
    assert text.endswith(f"{BY_HAND}\nThe ordering holds because ...\n")


# -- study specs ---------------------------------------------------------------------------------

SPEC_60 = REPO / "bench" / "studies" / "mnist1d_60.json"


HELD_OUT = ["trainer.dataset.train_size=1200", "trainer.dataset.val_size=200"]
ROW = {"name": "small", "config": TINY.name, "sets": HELD_OUT}


def write_spec(tmp_path, **changes) -> Path:
    """A valid three-row spec on the tiny config (200 samples held out for validation), with
    ``changes`` to its top-level keys."""
    spec = {
        "title": "Tiny testbed",
        "configs": "configs/tiny",
        "tuning_seeds": [0, 1],
        "final_seeds": list(range(10, 18)),
        "small": "small",
        "large": "large",
        "reference": "lars",
        "pairs": [["large", "small"]],
        "rows": [
            {
                "name": "small",
                "config": TINY.name,
                "sets": HELD_OUT,
                "grid": {"optimizer.params.lr": [0.1, 0.2]},
            },
            {
                "name": "large",
                "config": TINY.name,
                "sets": HELD_OUT,
                "grid": {"optimizer.params.lr": [0.4, 0.8]},
            },
            {
                "name": "lars",
                "config": TINY.name,
                "sets": [*HELD_OUT, "scheduler.params.decay_factor=0.3"],
                "grid": {"optimizer.params.lr": [0.4, 0.8, 1.6], "scheduler.params.rise_z": [1, 2]},
            },
        ],
    }
    spec.update(changes)
    spec = {k: v for k, v in spec.items() if v is not None}  # None: the key left out
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_the_60_epoch_spec_reruns_the_recorded_study():
    import accuracy
    from study_spec import load_spec

    spec = load_spec(SPEC_60)
    rows = [r.name for r in spec.rows]
    assert rows == ["small_batch", "large_batch_step", "lars_step", "two_phase", "two_phase_lars"]
    # 36 grid points, 25 final runs, 35 study runs (15 study specs equal a final run)
    assert accuracy.protocol_size(spec, rows) == 96
    grids = accuracy.states(spec, Path("/nonexistent"), rows)
    names = [r.name for r in accuracy.grid_specs(spec, grids)]
    # grid order as the study ran it: every lr at trust coefficient 0.001, then at 0.01
    assert names[8:11] == [
        "grid/lars_step/lr0.4_eta0.001/s0",
        "grid/lars_step/lr0.8_eta0.001/s0",
        "grid/lars_step/lr1.6_eta0.001/s0",
    ]
    assert names[14] == "grid/lars_step/lr0.4_eta0.01/s0"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reference": "lars_stpe"}, "reference: unknown row 'lars_stpe' (did you mean 'lars'?)"),
        ({"tuning_seeds": [0]}, "tuning_seeds: must name 2 seeds, got 1"),
        ({"final_seeds": [10, 11, 12, 13, 14]}, "final_seeds: must name at least 8 seeds, got 5"),
        ({"final_seeds": list(range(1, 9))}, "final_seeds: must be fresh: [1] also tune"),
        ({"configs": "configs/nowhere"}, "configs: "),
        ({"seeds": [1]}, "seeds: unknown key"),
        ({"pairs": [["large", "smal"]]}, "pairs[0]: unknown row 'smal' (did you mean 'small'?)"),
        ({"large": None}, "large: name both the small- and the large-batch row, or neither"),
        (
            {"rows": [{**ROW, "grid": {"optimizer.params.lr": []}}]},
            "rows.small.grid.optimizer.params.lr: no points",
        ),
        (
            {"rows": [{**ROW, "grid": {}}]},
            "rows.small.grid: no points",
        ),
        ({"rows": [{"name": "nothere", "grid": {"a.b": [1]}}]}, "nothere.json does not exist"),
        (
            {"rows": [{**ROW, "sets": [], "grid": {"optimizer.params.lr": [0.1]}}]},
            "rows.small.config: mnist1d_2rank.json holds out no validation split",
        ),
        (
            {"rows": [{**ROW, "grid": {"optimizer.params.lr": ["a/b"]}}]},
            "rows.small.grid.optimizer.params.lr: values must be numbers or strings without '/'",
        ),
        (
            {"studies": [{"name": "x", "row": "big", "key": "a.b", "values": [1]}]},
            "row: unknown row 'big'",
        ),
        (
            {"rows": [{**ROW, "grid": {"optimizer.params.lr": [0.2, 0.1, 0.4]}}]},
            "rows.small.grid.optimizer.params.lr: an extended axis must be numbers in increasing",
        ),
    ],
)
def test_a_spec_error_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    import accuracy

    path = write_spec(tmp_path, **change)
    assert accuracy.main(["--spec", str(path), "--work-dir", str(tmp_path / "w"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_rows_sharing_a_config_differ_by_their_fixed_overrides(tmp_path):
    import accuracy
    from study_spec import load_spec

    spec = load_spec(write_spec(tmp_path))
    grids = accuracy.states(spec, tmp_path, ["lars"])
    runs = accuracy.grid_specs(spec, grids)
    assert len(runs) == 3 * 2 * 2  # lr x rise_z x tuning seeds
    assert runs[0].name == "grid/lars/lr0.4_rise_z1/s0"
    assert runs[0].sets == [
        *HELD_OUT,
        "scheduler.params.decay_factor=0.3",
        "optimizer.params.lr=0.4",
        "scheduler.params.rise_z=1",
        "trainer.seed=0",
    ]
    assert runs[0].config == TINY


def test_the_choice_is_on_the_mean_of_the_tuning_seeds():
    from study_grid import resolve
    from study_spec import Row, StudySpec

    row = Row("r", "r", TINY, (), {"optimizer.params.lr": [0.1, 0.2, 0.4, 0.8]})
    spec = StudySpec(SPEC_60, "t", "", [row], [0, 1], [5], "r", "r", "r", extend=())
    # seed 0 alone would pick 0.2; the mean of both seeds picks 0.4
    vals = {
        "lr0.1": (0.90, 0.90),
        "lr0.2": (0.96, 0.90),
        "lr0.4": (0.95, 0.94),
        "lr0.8": (0.80, 0.80),
    }

    def read(name):
        _, _, point, seed = name.split("/")
        return {"final_val_accuracy": vals[point][int(seed[1:])]}

    state = resolve(spec, row, read)
    assert state.chosen == {"optimizer.params.lr": 0.4}
    assert [p.mean for p in state.points] == pytest.approx([0.90, 0.93, 0.945, 0.80])
    vals["lr0.2"] = (0.95, 0.94)  # a tie goes to the first point in grid order
    assert resolve(spec, row, read).chosen == {"optimizer.params.lr": 0.2}
    # an unfinished seed holds the choice back
    state = resolve(spec, row, lambda n: None if n.endswith("lr0.8/s1") else read(n))
    assert state.chosen is None and state.points[-1].vals == [0.80, None]


def test_a_best_point_on_the_grid_edge_extends_the_grid():
    from study_grid import next_value, resolve
    from study_spec import Row, StudySpec

    assert next_value([0.4, 0.8, 1.6], -1) == 3.2 and next_value([0.4, 0.8, 1.6], 0) == 0.2
    assert (
        next_value([0, 1, 2], -1) == 3
        and next_value([1, 2, 3], -1) == 4
        and next_value([-1.0, 0.0], 0) == -2.0
    )
    assert next_value([0.1, 0.2, 0.3], -1) == 0.4  # no float residue in the value or its name

    row = Row("r", "r", TINY, (), {"optimizer.params.lr": [0.4, 0.8], "x.eta": [0.1, 0.2]})
    spec = StudySpec(SPEC_60, "t", "", [row], [0, 1], [5], "r", "r", "r")
    acc = {0.2: 0.5, 0.4: 0.90, 0.8: 0.95, 1.6: 0.97, 3.2: 0.96, 6.4: 0.99}
    done = {0.4, 0.8}

    def read(name):
        lr = float(name.split("/")[2].split("_")[0][2:])
        return {"final_val_accuracy": acc[lr]} if lr in done else None

    state = resolve(spec, row, read)  # best at the upper lr edge: 1.6 is added, not yet run
    assert state.chosen is None and state.grid["optimizer.params.lr"] == [0.4, 0.8, 1.6]
    assert state.extended == ["lr1.6"] and state.grid["x.eta"] == [0.1, 0.2]  # eta not extended
    done.add(1.6)
    state = resolve(spec, row, read)
    assert state.grid["optimizer.params.lr"] == [0.4, 0.8, 1.6, 3.2] and state.chosen is None
    done.add(3.2)  # 3.2 is worse than 1.6: the choice is inside the grid now
    state = resolve(spec, row, read)
    assert state.chosen == {"optimizer.params.lr": 1.6, "x.eta": 0.1} and not state.refused
    acc[3.2] = 0.98  # still rising after max_extensions (2) steps: refused, naming the fix
    state = resolve(spec, row, read)
    assert state.chosen is None
    assert state.refused == (
        "r: the best point lr3.2_eta0.1 still sits on the upper edge of optimizer.params.lr "
        "after 2 extension(s); add values beyond 3.2 to rows.r.grid.optimizer.params.lr in "
        "mnist1d_60.json, or raise max_extensions"
    )


def finish(work, spec: RunSpec, summary: dict) -> None:
    """A finished run directory as the trainer leaves it: config, metrics and summary."""
    fake_run(spec, work, finished=False)
    base = {
        "plateau_epoch": None,
        "switch_epoch": None,
        "switch_forced": None,
        "decay_epochs": [],
        "final_lr": 0.2,
        "probe_share": None,
        "best_val_accuracy": 0.95,
        "best_val_epoch": 5,
        "commit": "c" * 40,
        "commit_dirty": False,
    }
    out = work / spec.name
    rows = [
        {
            "epoch": 1,
            "lr": 0.2,
            "train_loss": 1.0,
            "val_accuracy": summary.get("final_val_accuracy"),
        }
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps({**base, **summary}))


def test_the_report_is_generated_from_run_directories_alone(tmp_path):
    import accuracy
    import study_report
    from study_spec import load_spec

    work = tmp_path / "w"
    spec = load_spec(write_spec(tmp_path))
    names = [r.name for r in spec.rows]
    # the validation accuracy peaks at the grid's middle lr 0.8 for lars, at the top for the others
    for run in accuracy.grid_specs(spec, accuracy.states(spec, work, names)):
        lr = float(run.name.split("/")[2].split("_")[0][2:])
        seed = int(run.name.rsplit("s", 1)[1])
        finish(work, run, {"final_val_accuracy": 0.9 - abs(lr - 0.8) / 10 + seed / 1000})
    grids = accuracy.states(spec, work, names)
    assert grids["lars"].chosen == {"optimizer.params.lr": 0.8, "scheduler.params.rise_z": 1}
    # small and large chose their upper edge: lr is extended before any final run
    assert grids["small"].chosen is None and grids["small"].grid["optimizer.params.lr"][-1] == 0.4
    specs, notes = accuracy.plan(spec, work, "final", names, dry=True)
    assert {s.name.split("/")[1] for s in specs} == {"lars"} and len(notes) == 2
    for run in accuracy.grid_specs(spec, accuracy.states(spec, work, names)):
        if not (work / run.name / "summary.json").exists():  # extension points: worse
            finish(work, run, {"final_val_accuracy": 0.5})
    chosen = {r: s.chosen for r, s in accuracy.states(spec, work, names).items()}
    assert (
        chosen["small"] == {"optimizer.params.lr": 0.2}
        and chosen["large"]["optimizer.params.lr"] == 0.8
    )
    level = {"small": 0.99, "large": 0.97, "lars": 0.98}
    for run in accuracy.final_specs(spec, chosen):
        row, seed = run.name.split("/")[1], int(run.name.rsplit("s", 1)[1])
        extra = {"plateau_epoch": 3, "switch_epoch": 4, "decay_epochs": [6, 8], "probe_share": 0.02}
        finish(
            work,
            run,
            {
                "test_accuracy": level[row] + seed / 10000,
                "final_val_accuracy": 0.9,
                **(extra if row == "lars" else {}),
            },
        )
    text = study_report.render(spec, work, "python bench/accuracy.py --report-only")
    assert text.startswith("## Tiny testbed\n")
    # grid: each tuning seed and their mean; the chosen point; the extension marked
    assert (
        "| `lars` | lr0.8_rise_z1 | 90.00, 90.10 | 90.05 | **chosen** (grid edge: scheduler"
        not in text
    )
    assert "| `lars` | lr0.8_rise_z1 | 90.00, 90.10 | 90.05 | **chosen** |" in text
    assert (
        "| `small` | lr0.2 | 84.00, 84.10 | 84.05 | **chosen** (grid edge: optimizer.params.lr) |"
        not in text
    )
    assert "| `small` | lr0.4 | 50.00, 50.00 | 50.00 | (extension) |" in text
    # final table: n = 8 seeds, gap closed of a row halfway between large and small: 50 %
    assert "| 98.13 ± 0.02 [98.12, 98.15] (n=8) | 50 % [49, 51] | 3, 3, 3, 3, 3, 3, 3, 3 |" in text
    # paired against the reference: small - lars is +1.00 point on every seed
    assert (
        "| `small` | `lars` | [10, 11, 12, 13, 14, 15, 16, 17] | "
        + ", ".join(["+1.00"] * 8)
        + " | +1.00 [+1.00, +1.00] |"
        in text
    )
    # a further pair the spec names: large - small is -2.00 points
    assert (
        "| `large` | `small` | [10, 11, 12, 13, 14, 15, 16, 17] | " + ", ".join(["-2.00"] * 8)
        in text
    )
    # seed by seed: plateau, switch, decay epochs, decay count, final LR, probe share
    assert "| `lars` | 10 | 98.10 | 3 | 4 | 6, 8 | 2 | 0.2 | 2.0 % |" in text
    assert "c" * 40 in text and "no finished runs" not in text


def test_a_study_value_is_paired_with_its_rows_chosen_point(tmp_path):
    """The studies table: each value's test and validation accuracy against the row's final
    runs on the same seeds (what issue 21's floor is chosen on), and the row itself as
    ``chosen``."""
    import accuracy
    import study_report
    from study_spec import load_spec

    study = {"name": "floor", "row": "lars", "key": "scheduler.params.min_lr_ratio",
             "values": [0.01]}  # fmt: skip
    spec = load_spec(write_spec(tmp_path, studies=[study]))
    work = tmp_path / "w"
    chosen = {"lars": {"optimizer.params.lr": 0.8, "scheduler.params.rise_z": 1}}
    for run in accuracy.final_specs(spec, chosen) + accuracy.study_specs(spec, chosen):
        seed = int(run.name.rsplit("s", 1)[1])
        floor = run.name.startswith("studies/")
        finish(
            work,
            run,
            {
                "test_accuracy": 0.95 + (0.01 if floor else 0) + seed / 10000,
                "final_val_accuracy": 0.94 - (0.005 if floor else 0),
                "switch_epoch": 4,
                "decay_epochs": [6] if floor else [6, 8, 9],
                "final_lr": 0.1 if floor else 0.05,
            },
        )
    text = "\n".join(study_report.study_tables(spec, work))
    # a spec without the batch rows (small and large left out) reports no gap closed
    rules = load_spec(write_spec(tmp_path, studies=[study], small=None, large=None))
    assert (rules.small, rules.large) == (None, None)
    rendered = study_report.render(rules, work, "x").splitlines()
    line = next(x for x in rendered if x.startswith("| `lars` ("))
    assert line.split(" | ")[2].startswith("95.13") and line.split(" | ")[3] == "-"
    assert "| floor | `lars` | chosen | 95.13 ± 0.02 [95.12, 95.15] (n=8) |  | 94.00 |  |" in text
    assert (
        "| floor | `lars` | 0.01 | 96.13 ± 0.02 [96.12, 96.15] (n=8) | +1.00 [+1.00, +1.00] "
        "| 93.50 | -0.50 [-0.50, -0.50] | 4, 4, 4, 4, 4, 4, 4, 4 | 1, 1, 1, 1, 1, 1, 1, 1 |"
    ) in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_study_command_trains_extends_chooses_and_resumes(tmp_path, capsys):
    """The whole command on one short row: the grid (extended while its best point is on an
    edge), the final run at the chosen point, the report, and a rerun that trains nothing."""
    import accuracy
    from study_spec import load_spec

    row = {
        "name": "a",
        "config": TINY.name,
        "sets": [*HELD_OUT, "trainer.epochs=2", "trainer.checkpoint_every=0"],
        "grid": {"optimizer.params.lr": [0.2, 0.4]},
    }
    path = write_spec(
        tmp_path,
        rows=[row],
        small="a",
        large="a",
        reference="a",
        pairs=[],
        tuning_seeds=[0],
        final_seeds=[1],
        seed_waiver="a smoke test",
        max_extensions=1,
    )
    work, results = tmp_path / "w", tmp_path / "results.md"
    argv = ["--spec", str(path), "--work-dir", str(work), "--results", str(results)]
    code = accuracy.main([*argv, "--phase", "all"])
    assert code == 0
    # validation accuracy after 2 epochs here: lr 0.2 33.5 %, 0.4 38.5 %, 0.8 32.5 %: the best
    # point sat on the upper edge, 0.8 was added and trained, and 0.4 is chosen inside the grid
    state = accuracy.states(load_spec(path), work, ["a"])["a"]
    assert state.grid["optimizer.params.lr"] == [0.2, 0.4, 0.8] and state.extended == ["lr0.8"]
    assert state.chosen == {"optimizer.params.lr": 0.4}
    final = read_run(work / "final" / "a" / "s1")
    assert final["config"]["optimizer"]["params"]["lr"] == 0.4
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert final["commit"] == head.stdout.strip()
    assert "## Tiny testbed" in results.read_text() and "(n=1)" in results.read_text()
    capsys.readouterr()
    assert accuracy.main([*argv, "--phase", "all"]) == 0  # resumed: nothing left to train
    assert "0 run(s) to train" in capsys.readouterr().out


def test_records_keep_finished_runs_and_a_restored_study_resumes(tmp_path):
    from study_records import main as records

    work, kept, again = tmp_path / "work", tmp_path / "records", tmp_path / "again"
    done = RunSpec("final/row/s1", TINY, ["trainer.seed=1"])
    alias = RunSpec(
        "studies/x/0.5/s1", TINY, ["scheduler.params.decay_factor=0.5", "trainer.seed=1"]
    )
    unfinished = RunSpec("final/row/s2", TINY, ["trainer.seed=2"])
    fake_run(done, work, finished=True)
    (work / done.name / "checkpoints").mkdir()  # neither checkpoints nor logs are kept
    (work / done.name / "metrics.jsonl").write_text("{}\n")
    fake_run(unfinished, work, finished=False)
    link_duplicates([done, alias], work)
    assert records(["save", str(work), str(kept)]) == 0
    assert sorted(p.name for p in (kept / done.name).iterdir()) == ["config.json", "summary.json"]
    assert not (kept / unfinished.name).exists()
    assert read_run(kept / alias.name) == read_run(kept / done.name) | {
        "path": str(kept / alias.name)
    }
    assert records(["restore", str(kept), str(again)]) == 0
    assert [run_status(s, again) for s in (done, alias, unfinished)] == ["done", "alias", "new"]
    assert records(["save", str(work), str(kept)]) == 0  # nothing new: nothing changes
    assert records(["restore", str(tmp_path / "none"), str(again)]) == 2
