"""Every config shipped under configs/ passes ``ds-twophase check-config`` for 8 ranks.

The paper's configs read real data sets from ``data/<name>``; here each gets a tiny root in the
real file format (the writers of tests/test_data.py), passed with ``--set trainer.dataset.root``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data import write_cifar, write_image_folders, write_svhn

from ds_twophase.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.json"))
#: Configs whose micro batch was chosen for fewer ranks (their results in docs/ depend on it):
#: at 8 ranks they need this micro batch, which keeps the global batch.
MICRO_AT_8 = {
    "mnist1d/small_batch.json": 16,
    "tiny/mnist1d_2rank.json": 25,
    "mnist1d_hard/small_batch.json": 16,
    "mnist1d_hard/large_batch_step.json": 128,
    "mnist1d_hard/lars_step.json": 128,
    "mnist1d_hard/two_phase.json": 128,
    "mnist1d_hard/two_phase_lars.json": 128,
    "mnist1d_hard/two_phase_lars_late_step.json": 128,
    "mnist1d_hard/two_phase_lars_loss_only.json": 128,
    "mnist1d_hard/tpl_significant.json": 128,
    "mnist1d_hard/tpl_significant_probe_loss.json": 128,
}
#: The testbed of issue 20, also checked for the one process its study runs with.
HARD = [p for p in CONFIGS if p.parent.name == "mnist1d_hard"]


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, Path]:
    """A tiny root per real data set, in the layout the trainer reads."""
    base = tmp_path_factory.mktemp("data")
    roots = {name: base / name for name in ("cifar10", "cifar100", "svhn", "imagenet")}
    for root in roots.values():
        root.mkdir()
    write_cifar(roots["cifar10"], "cifar10")
    write_cifar(roots["cifar100"], "cifar100")
    write_svhn(roots["svhn"], {"train": 4, "extra": 4, "test": 4})
    write_image_folders(roots["imagenet"], per_class=1)
    return roots


def root_override(path: Path, roots: dict[str, Path]) -> list[str]:
    """``--set trainer.dataset.root=...`` for a config that reads a real data set."""
    dataset = json.loads(path.read_text()).get("trainer", {}).get("dataset", {})
    name = dataset.get("name", "mnist1d")
    return ["--set", f"trainer.dataset.root={roots[name]}"] if name in roots else []


def test_every_config_folder_is_covered():
    folders = {p.parent.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"mnist1d", "mnist1d_hard", "tiny", "paper"} <= folders
    assert len(list((REPO / "configs/paper").glob("*.json"))) == 20  # 4 tables x 5 rows


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_checks_for_8_ranks(path, data_roots, capsys):
    argv = ["check-config", str(path), "--world-size", "8", *root_override(path, data_roots)]
    micro = MICRO_AT_8.get(path.relative_to(REPO / "configs").as_posix())
    if micro is not None:
        argv += ["--set", f"train_micro_batch_size_per_gpu={micro}"]
    status = cli_main(argv)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith(f"ok: {path}")


@pytest.mark.parametrize("path", HARD, ids=lambda p: p.name)
def test_mnist1d_hard_config_checks_for_1_rank(path, capsys):
    status = cli_main(["check-config", str(path), "--world-size", "1"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith(f"ok: {path}")


def test_mnist1d_hard_configs_share_the_regime():
    """Every row of the issue-20 testbed trains on the same data for the same budget, with the
    protocol's schedule settings (warmup E/30, patience 0.05, ratio 1/3, beta 0.5, no cap)."""
    rows = {
        p.stem: json.loads(p.read_text()) for p in (REPO / "configs/mnist1d_hard").glob("*.json")
    }
    spec = json.loads((REPO / "bench/studies/mnist1d_hard.json").read_text())
    assert set(rows) == {r["name"] for r in spec["rows"]}  # one file per row of the study
    for name, cfg in rows.items():
        tc = cfg["trainer"]
        assert tc["dataset"] == rows["small_batch"]["trainer"]["dataset"], name
        assert tc["epochs"] == 150, name
        params = cfg["scheduler"]["params"]
        assert params["warmup_epochs"] == 5, name
        assert cfg["train_batch_size"] == (128 if name == "small_batch" else 1024), name
        if cfg["scheduler"]["type"] == "TwoPhaseLR":
            assert "max_exploration_epochs" not in params, name
            assert (params["plateau_patience"], params["extra_epochs_ratio"]) == (0.05, 0.3333)
            assert params["decay_factor"] == 0.5, name
    ds = rows["small_batch"]["trainer"]["dataset"]
    assert ds["val_size"] >= 8000 and ds["test_size"] >= 8000
    assert (ds["train_size"] - ds["val_size"]) % 1024 == 0  # every sample used each epoch


def test_mnist1d_hard_configs_carry_the_studys_chosen_points():
    """Each row's file holds the point the study chose on validation (its kept records,
    bench/studies/records/mnist1d_hard), rise_z included for issue 21's rows."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import accuracy
    from study_spec import load_spec

    spec = load_spec(REPO / "bench/studies/mnist1d_hard.json")
    records = REPO / "bench/studies/records/mnist1d_hard"
    states = accuracy.states(spec, records, [r.name for r in spec.rows])
    for row in spec.rows:
        chosen = states[row.name].chosen
        assert chosen is not None, row.name
        cfg = json.loads((REPO / "configs/mnist1d_hard" / f"{row.name}.json").read_text())
        params = {
            "optimizer.params.lr": cfg["optimizer"]["params"]["lr"],
            "optimizer.params.trust_coefficient": cfg["optimizer"]["params"].get(
                "trust_coefficient"
            ),
            "scheduler.params.rise_z": cfg["scheduler"]["params"].get("rise_z"),
        }
        assert {k: params[k] for k in chosen} == chosen, row.name


def test_paper_config_without_its_data_is_one_error_line(capsys, monkeypatch, tmp_path):
    """Run from a directory without data/: check-config refuses the missing root, exit 2."""
    monkeypatch.chdir(tmp_path)
    path = REPO / "configs/paper/cifar10_resnet20_two_phase_lars.json"
    assert cli_main(["check-config", str(path), "--world-size", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: trainer.dataset.root: directory 'data/cifar10' does not exist"]


#: The paper's Tables 2-5 as read in configs/paper/README.md: (batch, LR, LARS eta or None,
#: step-decay epochs or None for the adaptive two-phase schedule), and the epoch budget.
PAPER = {
    "cifar10_resnet20": (300, {
        "small_batch": (128, 0.1, None, [150, 225]),
        "large_batch": (8192, 6.4, None, [150, 225]),
        "lars": (8192, 3.5, 0.01, [150, 225]),
        "two_phase": (8192, 4.8, None, None),
        "two_phase_lars": (8192, 3.5, 0.01, None),
    }),
    "cifar100_wrn28_10": (250, {
        "small_batch": (128, 0.1, None, [125, 185]),
        "large_batch": (8192, 6.4, None, [125, 185]),
        "lars": (8192, 6.0, 0.01, [125, 185]),
        "two_phase": (8192, 6.4, None, None),
        "two_phase_lars": (8192, 6.0, 0.01, None),
    }),
    "svhn_wrn16_8": (160, {
        "small_batch": (256, 0.01, None, [80, 120]),
        "large_batch": (4096, 0.32, None, [80, 120]),
        "lars": (4096, 0.32, 0.001, [80, 120]),
        "two_phase": (4096, 0.32, None, None),
        "two_phase_lars": (4096, 0.32, 0.001, None),
    }),
    "imagenet_resnet50": (100, {
        "small_batch": (256, 0.1, None, [30, 60, 80]),
        "large_batch": (16384, 6.4, None, [30, 60, 80]),
        "lars": (16384, 32.0, 0.001, [30, 60, 80]),
        "two_phase": (16384, 6.4, None, None),
        "two_phase_lars": (16384, 32.0, 0.001, None),
    }),
}  # fmt: skip


@pytest.mark.parametrize("table", PAPER)
def test_paper_configs_hold_the_tables_values(table):
    epochs, rows = PAPER[table]
    readme = (REPO / "configs/paper/README.md").read_text()
    for row, (batch, lr, eta, milestones) in rows.items():
        name = f"{table}_{row}.json"
        assert f"`{name}`" in readme, name
        cfg = json.loads((REPO / "configs/paper" / name).read_text())
        opt, sched = cfg["optimizer"], cfg["scheduler"]
        assert cfg["train_batch_size"] == batch and cfg["trainer"]["epochs"] == epochs, name
        assert opt["type"] == ("LARS" if eta else "SGD") and opt["params"]["lr"] == lr, name
        assert opt["params"]["momentum"] == 0.9 and opt["params"].get("trust_coefficient") == eta
        assert sched["params"]["warmup_epochs"] == (0 if row == "small_batch" else 10), name
        if milestones is None:  # two-phase: beta 0.5, plateau after 5% of E, a third more
            assert sched["type"] == "TwoPhaseLR", name
            assert sched["params"]["decay_factor"] == 0.5
            assert sched["params"]["plateau_patience"] == 0.05
            assert sched["params"]["extra_epochs_ratio"] == pytest.approx(1 / 3, abs=1e-4)
        else:
            assert sched["type"] == "WarmupStepLR", name
            assert sched["params"] == {"warmup_epochs": sched["params"]["warmup_epochs"],
                                       "milestones": milestones, "gamma": 0.1}  # fmt: skip
