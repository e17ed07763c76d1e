"""ds-twophase plot / report and the seed statistics, on fixture run directories."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ds_twophase.analysis import bootstrap_ci, load_run, mean_std, paired_difference
from ds_twophase.analysis.plot import plot_data
from ds_twophase.analysis.report import group_runs, table_rows
from ds_twophase.cli import main

BASE = {
    "train_batch_size": 2048,
    "steps_per_print": 1000000,
    "optimizer": {"type": "LARS", "params": {"lr": 4.0, "trust_coefficient": 0.01}},
    "scheduler": {"type": "TwoPhaseLR", "params": {"warmup_epochs": 5, "decay_factor": 0.5}},
    "trainer": {"dataset": {"name": "mnist1d"}, "epochs": 12, "seed": 0, "output_dir": "x"},
}
STEP = copy.deepcopy(BASE)
STEP["scheduler"] = {"type": "WarmupStepLR", "params": {"milestones": [6, 9], "gamma": 0.1}}

# A two-phase run: plateau at 5, switch at 7, decays at 9 and 12, a floor (no-op) at 11.
DECISIONS = ["none"] * 4 + ["plateau", "none", "switch", "keep", "decay", "keep", "floor", "decay"]


def rows_for(decisions, accuracy=0.9, lr=4.0):
    rows = []
    for epoch, decision in enumerate(decisions, 1):
        if decision == "decay":
            lr /= 2
        converging = decision in ("switch", "keep", "decay", "floor")
        rows.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": 2.0 / epoch,
                "val_loss": 1.0,
                "val_accuracy": accuracy if epoch == len(decisions) else 0.5,
                "phase": "convergence" if converging else "exploration",
                "hmax": 10.0 + epoch if converging else None,
                "decision": decision,
                "probe_seconds": 0.1 if converging else 0.0,
            }
        )
    return rows


def write_run(root: Path, name: str, config: dict, rows: list[dict], seed=0, summary=None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    config = copy.deepcopy(config)
    config["trainer"]["seed"] = seed
    config["trainer"]["output_dir"] = str(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


# -- stats ------------------------------------------------------------------------------------
def test_mean_std_is_the_sample_std():
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_bootstrap_ci_known_answers():
    # Resampled means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are exactly 0 and 1.
    assert bootstrap_ci([0.0, 1.0], level=0.95, n=20000) == (0.0, 1.0)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    # A large normal sample: the percentile interval approaches mean +- 1.96 * std / sqrt(n).
    values = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    low, high = bootstrap_ci(values, level=0.95, n=20000, seed=3)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.03)
    assert high == pytest.approx(values.mean() + half, abs=0.03)
    # Seeded: the same call gives the same interval, another seed a (slightly) different one.
    assert bootstrap_ci(values[:10], seed=5) == bootstrap_ci(values[:10], seed=5)
    assert bootstrap_ci(values[:10], seed=5) != bootstrap_ci(values[:10], seed=6)


def test_paired_difference():
    out = paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])
    assert out["mean"] == pytest.approx(4 / 3) and out["std"] == pytest.approx(math.sqrt(1 / 3))
    # differences [1, 1, 2]: a resample's mean is 1 with probability 8/27 and 2 with 1/27, both
    # above 2.5%, so the 95% interval is exactly [1, 2]
    assert (out["low"], out["high"]) == (1.0, 2.0)
    with pytest.raises(ValueError, match="pair them"):
        paired_difference([1.0], [1.0, 2.0])


# -- plot -------------------------------------------------------------------------------------
def test_plot_data_markers_are_the_metrics_epochs(tmp_path):
    run = load_run(write_run(tmp_path, "a", BASE, rows_for(DECISIONS)))
    # alpha = 0: the plateau epoch is the switch epoch, flagged with plateau: true
    alpha0 = rows_for(["none"] * 4 + ["switch", "decay"])
    alpha0[4]["plateau"] = True
    step = rows_for(["none"] * 5 + ["decay", "none", "none", "decay"])
    other = load_run(write_run(tmp_path, "b", BASE, alpha0, seed=1))
    baseline = load_run(write_run(tmp_path, "c", STEP, step, seed=0))
    data = plot_data([run, other, baseline])
    assert [d.label for d in data] == [
        "LARS + TwoPhaseLR, seed 0",
        "LARS + TwoPhaseLR, seed 1",
        "LARS + WarmupStepLR, seed 0",
    ]
    assert data[0].markers == {"plateau": [5], "switch": [7], "decay": [9, 12]}
    assert data[1].markers == {"plateau": [5], "switch": [5], "decay": [6]}
    assert data[2].markers == {"plateau": [], "switch": [], "decay": [6, 9]}
    epochs, hmax = data[0].curves["hmax"]
    assert epochs == list(range(7, 13)) and hmax == [10.0 + e for e in epochs]
    assert data[0].curves["lr"][1] == [r["lr"] for r in rows_for(DECISIONS)]
    assert run.events.floors == [11]


def test_decays_inferred_from_lr_without_decisions(tmp_path):
    rows = [
        {"epoch": e, "lr": lr, "decision": None} for e, lr in enumerate([1, 2, 2, 0.2, 0.19], 1)
    ]
    ev = load_run(write_run(tmp_path, "ds", BASE, rows)).events
    assert ev.decays == [4] and ev.inferred  # a 5% step is not a decay, a 90% drop is


def _image_ok(path: Path, magic: bytes) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes().startswith(magic)


def test_plot_command_writes_images(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path, "a", BASE, rows_for(DECISIONS), seed=0)
    b = write_run(tmp_path, "b", BASE, rows_for(DECISIONS[:-1] + ["keep"]), seed=1)
    assert main(["plot", str(a), "-o", str(tmp_path / "one.png")]) == 0
    assert _image_ok(tmp_path / "one.png", b"\x89PNG")
    assert main(["plot", str(a), str(b), "-o", str(tmp_path / "two.svg")]) == 0
    assert _image_ok(tmp_path / "two.svg", b"<?xml")
    assert main(["plot", str(a), str(b), "-o", str(tmp_path / "two.pdf")]) == 0
    assert _image_ok(tmp_path / "two.pdf", b"%PDF")
    assert "wrote" in capsys.readouterr().out


def test_plot_bad_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    a = write_run(tmp_path, "a", BASE, rows_for(DECISIONS))
    assert main(["plot", str(a), "-o", str(tmp_path / "x.jpg")]) == 2
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "unknown image format" in err[0] and "not a run directory" in err[1]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert main(["plot", str(a), "-o", str(tmp_path / "x.png")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert 'pip install -e ".[plot]"' in line and not (tmp_path / "x.png").exists()


# -- report -----------------------------------------------------------------------------------
def test_report_numbers_are_mean_and_std_by_hand(tmp_path, capsys):
    accs, firsts = [0.90, 0.92, 0.97], [9, 8, 10]
    dirs = []
    for seed, (acc, first) in enumerate(zip(accs, firsts, strict=True)):
        decisions = ["none"] * 4 + ["plateau", "switch"] + ["keep"] * 6
        decisions[first - 1] = "decay"
        dirs.append(write_run(tmp_path, f"tp{seed}", BASE, rows_for(decisions, acc), seed=seed))
    # summary.json wins over metrics.jsonl where present
    for seed, acc in enumerate([0.80, 0.84]):
        summary = {"test_accuracy": acc, "decay_epochs": [6, 9], "best_val_accuracy": 0.9}
        rows = rows_for(["none"] * 12, 0.85 + seed / 100)
        dirs.append(write_run(tmp_path, f"st{seed}", STEP, rows, seed=seed, summary=summary))
    assert main(["report", *map(str, dirs), "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["setting"] for r in table] == ["LARS + TwoPhaseLR", "LARS + WarmupStepLR"]
    tp, st = table
    # by hand: mean 0.93, sample std sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2)
    assert float(tp["val_accuracy_mean"]) == pytest.approx(0.93)
    assert float(tp["val_accuracy_std"]) == pytest.approx(math.sqrt(0.0026 / 2))
    assert float(tp["first_decay_mean"]) == pytest.approx(9.0)
    assert float(tp["first_decay_std"]) == pytest.approx(1.0)
    assert float(tp["best_final_val_accuracy"]) == pytest.approx(0.97)  # best run's final value
    # best_val_accuracy means summary.json's (the best epoch's value), here from metrics.jsonl
    assert float(tp["best_val_accuracy_mean"]) == pytest.approx(0.93)
    assert tp["runs"] == "3" and tp["seeds"] == "0 1 2" and tp["test_accuracy_mean"] == ""
    assert tp["lars_coefficient"] == "0.01" and tp["batch_size"] == "2048"
    assert float(st["test_accuracy_mean"]) == pytest.approx(0.82)
    assert float(st["test_accuracy_std"]) == pytest.approx(math.sqrt(0.0008))
    assert float(st["val_accuracy_mean"]) == pytest.approx(0.855)
    assert float(st["best_val_accuracy_mean"]) == pytest.approx(0.9)  # summary.json's value
    assert st["decay_epochs"] == "6/9" and st["decay_policy"] == "step-wise (β = 0.1)"
    assert main(["report", *map(str, dirs)]) == 0
    markdown = capsys.readouterr().out
    assert (
        "| LARS + TwoPhaseLR | 3 | 2048 | 4 | adaptive (β = 0.5) | adaptive (9 ± 1) |" in markdown
    )
    assert "93.00 ± 3.61%" in markdown and "82.00 ± 2.83%" in markdown


@pytest.mark.parametrize(
    ("key", "value", "same"),
    [
        ("trainer.seed", 7, True),
        ("trainer.output_dir", "elsewhere", True),
        ("trainer.checkpoint_every", 5, True),
        # keys that leave training unchanged (the list --resume uses) do not split a group
        ("trainer.eval_every", 2, True),
        ("trainer.margins_every", 3, True),
        ("scheduler.params.probe.every", 4, True),
        ("trainer.dataset.root", "/elsewhere", True),
        ("tensorboard.enabled", True, True),
        ("optimizer.params.lr", 2.0, False),
        ("scheduler.params.decay_factor", 0.4, False),
        ("trainer.dataset.seed", 1, False),
        ("trainer.epochs", 13, False),
    ],
)
def test_grouping_ignores_only_the_seed(tmp_path, key, value, same):
    changed = copy.deepcopy(BASE)
    node = changed
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    a = load_run(write_run(tmp_path, "a", BASE, rows_for(DECISIONS)))
    b = load_run(write_run(tmp_path, "b", BASE, rows_for(DECISIONS)))
    b.config = changed if key != "trainer.output_dir" else b.config
    groups = group_runs([a, b])
    assert len(groups) == (1 if same else 2)
    if not same:  # the table names what differs between two groups of one method
        names = [row["Setting"] for row in table_rows([a, b])]
        assert names[0] != names[1] and last in names[1]


def test_report_reads_a_partial_last_line(tmp_path, capsys):
    path = write_run(tmp_path, "a", BASE, rows_for(DECISIONS))
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 13, "lr"')  # killed mid-write
    assert len(load_run(path).rows) == 12
    assert main(["report", str(path), str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_and_resume_share_one_list_of_training_free_keys():
    from ds_twophase.analysis.report import IGNORED_KEYS, group_key
    from ds_twophase.config.free_keys import TRAINING_FREE_KEYS
    from ds_twophase.trainer.resume import RESUME_FREE_KEYS, resume_fingerprint

    assert RESUME_FREE_KEYS is TRAINING_FREE_KEYS
    assert IGNORED_KEYS == ("trainer.seed",)  # report's own addition: a group is all seeds
    changed = copy.deepcopy(BASE)
    changed["trainer"].update(eval_every=3, margins_every=2)
    assert group_key(changed) == group_key(BASE)
    assert resume_fingerprint(changed) == resume_fingerprint(BASE)
    changed["trainer"]["seed"] = 4  # report groups seeds; a resume must refuse another seed
    assert group_key(changed) == group_key(BASE)
    assert resume_fingerprint(changed) != resume_fingerprint(BASE)
