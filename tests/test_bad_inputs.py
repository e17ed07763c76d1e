"""Bad input never gives a traceback (issue 6, item 3).

Each malformed input below (a config file, a ``--set`` override or a command-line flag) goes
through the real entry point, ``python -m ds_twophase.train``: in-process through
``ds_twophase.train.main`` for most cases (validation runs before any process group exists), and
through the real 2-rank ``deepspeed`` launcher for a few. Every case must give exit status 2, one
``error:`` line naming the key (and the fix), no traceback, and leave no rank running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.distributed as tdist
from _launch import LAUNCHER_VARS, REPO, kill_group, run_deepspeed, start_group

from ds_twophase.cli import main as cli_main
from ds_twophase.train import main as train_main

BASE = REPO / "configs" / "tiny" / "mnist1d_2rank.json"
DELETE = object()  # in Case.file: remove the key


@dataclass(frozen=True)
class Case:
    """One malformed input. ``{tmp}`` in strings is the test's tmp_path."""

    id: str
    expect: tuple[str, ...]
    """Substrings of the one ``error:`` line: the key, and where useful the fix."""
    file: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> value (or DELETE) changed in the config file."""
    text: str | bytes | None = None
    """Raw content of the config file instead of the (changed) base config."""
    sets: tuple[str, ...] = ()
    """``--set`` overrides on the command line."""
    args: tuple[str, ...] = ()
    """Other flags; a ``--config`` here replaces the default one."""
    cli: tuple[str, ...] | None = None
    """Instead of the trainer: the ``ds-twophase`` command line (``{config}``: the file)."""
    marks: tuple[Any, ...] = ()


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with a GPU")
BAD_JSON = '{\n  "train_batch_size": 200,\n  "optimizer": {"type": "SGD",}\n}\n'

CASES = [
    # -- out-of-range and wrongly typed values -------------------------------------------
    Case("decay_factor_above_1", ("scheduler.params.decay_factor:",),
         file={"scheduler.params.decay_factor": 1.5}),
    Case("decay_factor_zero", ("scheduler.params.decay_factor:",),
         sets=("scheduler.params.decay_factor=0",)),
    Case("negative_patience", ("scheduler.params.plateau_patience:",),
         file={"scheduler.params.plateau_patience": -1}),
    Case("warmup_epochs_string", ("scheduler.params.warmup_epochs:", "number"),
         file={"scheduler.params.warmup_epochs": "ten"}),
    Case("total_epochs_infinite", ("scheduler.params.total_epochs:", "finite"),
         sets=("scheduler.params.total_epochs=Infinity",)),
    Case("negative_epochs", ("trainer.epochs:", ">= 1"), sets=("trainer.epochs=-3",)),
    Case("zero_collective_timeout", ("trainer.collective_timeout_minutes:", "> 0"),
         sets=("trainer.collective_timeout_minutes=0",)),
    Case("probe_max_iters_zero", ("scheduler.params.probe.max_iters:",),
         file={"scheduler.params.probe.max_iters": 0}),
    Case("probe_warm_start_not_bool", ("scheduler.params.probe.warm_start:", "true or false"),
         sets=("scheduler.params.probe.warm_start=3",)),
    Case("optimizer_lr_negative", ("optimizer.params.lr:", ">= 0"),
         sets=("optimizer.params.lr=-1",)),
    Case("optimizer_momentum_string", ("optimizer.params.momentum:", "number"),
         file={"optimizer.params.momentum": "high"}),
    Case("optimizer_section_not_object", ("optimizer:", "JSON object"), file={"optimizer": 5}),
    Case("trainer_section_not_object", ("trainer:", "JSON object"), sets=("trainer=[1]",)),
    Case("micro_batch_string", ("train_micro_batch_size_per_gpu:", "positive integer"),
         file={"train_micro_batch_size_per_gpu": "100"}),
    Case("train_batch_zero", ("train_batch_size:", "positive integer"),
         sets=("train_batch_size=0",)),
    # -- unknown keys and names, with a did-you-mean -------------------------------------
    Case("unknown_top_level_key", ("train_batch_sise:", "did you mean 'train_batch_size'"),
         file={"train_batch_sise": 200}),
    Case("unknown_scheduler_param", ("scheduler.params.decay_factr:", "'decay_factor'"),
         sets=("scheduler.params.decay_factr=0.5",)),
    Case("unknown_trainer_key", ("trainer.epoch:", "did you mean 'epochs'"),
         sets=("trainer.epoch=3",)),
    Case("unknown_optimizer_param", ("optimizer.params.momentun:", "'momentum'"),
         file={"optimizer.params.momentun": 0.9}),
    Case("unknown_optimizer", ("optimizer.type:", "did you mean 'Adam'"),
         sets=("optimizer.type=Adamm",)),
    Case("unknown_scheduler", ("scheduler.type:", "did you mean 'TwoPhaseLR'"),
         sets=("scheduler.type=TwoPhaseLr",)),
    Case("unknown_dataset", ("trainer.dataset.name:", "did you mean 'mnist1d'"),
         sets=("trainer.dataset.name=mnist1e",)),
    Case("unknown_model", ("trainer.model.name:", "resnet20"), sets=("trainer.model.name=resnet21",)),
    Case("unknown_probe_layer", ("scheduler.params.probe.layer:", "did you mean 'fc'"),
         sets=("scheduler.params.probe.layer=fc9",)),
    Case("unknown_probe_mode", ("scheduler.params.probe.mode:", "'sharded'"),
         file={"scheduler.params.probe.mode": "rank1"}),
    # -- combinations that cannot work ----------------------------------------------------
    Case("gas_does_not_divide", ("train_batch_size:", "gradient_accumulation_steps"),
         file={"gradient_accumulation_steps": 3}),
    Case("train_size_below_one_batch", ("trainer.dataset.train_size:", "at least 200"),
         sets=("trainer.dataset.train_size=100",)),
    Case("model_does_not_fit_data", ("trainer.model.name:", "mnist1d_cnn"),
         sets=("trainer.model.name=resnet20",)),
    Case("reduce_lr_on_plateau", ("scheduler.type:", "use TwoPhaseLR"),
         file={"scheduler": {"type": "ReduceLROnPlateau", "params": {}}}),
    Case("builtin_scheduler_missing_arg", ("scheduler.params.step_size:", "required"),
         file={"scheduler": {"type": "StepLR", "params": {"gamma": 0.5}}}),
    Case("lars_with_zero3", ("zero_optimization.stage:", "stages 0, 1 and 2"),
         file={"optimizer.type": "LARS", "zero_optimization.stage": 3,
               "scheduler.params.probe.mode": "sharded"}),
    Case("sgd_with_zero1_untested", ("optimizer.type:", "zero_allow_untested_optimizer"),
         sets=("zero_optimization.stage=1",)),
    Case("probe_rank0_with_zero3", ("scheduler.params.probe.mode:", '"sharded"'),
         file={"zero_optimization.stage": 3, "zero_allow_untested_optimizer": True}),
    Case("zero_stage_4", ("zero_optimization.stage:", "0, 1, 2 or 3"),
         sets=("zero_optimization.stage=4",)),
    Case("fp16_without_gpu", ("fp16.enabled:", "bf16"), file={"fp16": {"enabled": True}},
         marks=(NO_GPU,)),
    Case("no_trainer_section", ("trainer:", "add one"), file={"trainer": DELETE}),
    # -- the dataset's files ------------------------------------------------------------
    Case("dataset_root_missing", ("trainer.dataset.root:", "does not exist"),
         file={"trainer.dataset": {"name": "cifar10", "root": "{tmp}/no-such-dir"},
               "trainer.model.name": "resnet20"}),
    Case("dataset_root_empty", ("trainer.dataset.root:", "unpack"),
         file={"trainer.dataset": {"name": "cifar10", "root": "{tmp}/empty"},
               "trainer.model.name": "resnet20"}),
    Case("dataset_root_unset", ("trainer.dataset.root:", "set root"),
         sets=('trainer.dataset={"name": "svhn"}', "trainer.model.name=resnet20")),
    # -- the config file itself ------------------------------------------------------------
    Case("invalid_json", ("config:", "line 3 column 31"), text=BAD_JSON),
    Case("json_not_an_object", ("config:", "JSON object"), text="[1, 2]\n"),
    Case("config_file_missing", ("config:", "does not exist"),
         args=("--config", "{tmp}/missing.json")),
    Case("config_is_a_directory", ("config:", "cannot read", "JSON file"), args=("--config", "{tmp}/empty")),
    Case("config_not_utf8", ("config:", "UTF-8"), text=b'{"train_batch_size": 200, "x": "\xff"}'),
    Case("output_dir_is_a_file", ("trainer.output_dir:", "not a directory"),
         sets=("trainer.output_dir={tmp}/run.json",)),
    Case("output_dir_cannot_be_created", ("trainer.output_dir:", "cannot create", "/proc/forbidden"),
         sets=("trainer.output_dir=/proc/forbidden/run",)),
    # -- command-line flags -----------------------------------------------------------------
    Case("set_without_value", ("--set 'trainer.epochs'", "KEY=VALUE"), sets=("trainer.epochs",)),
    Case("set_into_a_number", ("--set 'trainer.epochs.max=3'", "not an object", "itself"),
         sets=("trainer.epochs.max=3",)),
    Case("stop_after_zero", ("--stop-after:", ">= 1"), args=("--stop-after", "0")),
    Case("stop_after_not_a_number", ("--stop-after:", "invalid int value"),
         args=("--stop-after", "two")),
    Case("unknown_flag", ("--epochs:", "unknown option"), args=("--epochs", "3")),
    Case("stray_argument", ("'run.json': unexpected argument", "--config"), args=("run.json",)),
    Case("resume_path_missing", ("--resume:", "does not exist", "'auto'"),
         args=("--resume", "{tmp}/no-such-checkpoint")),
    # -- the ds-twophase command ------------------------------------------------------------
    Case("unknown_command", ("unknown command 'trian'", "did you mean 'train'"), cli=("trian",)),
    Case("check_config_without_file", ("config: required",), cli=("check-config",)),
    Case("check_config_world_size_zero", ("--world-size:", "positive integer"),
         cli=("check-config", "{config}", "--world-size", "0")),
    Case("check_config_3_ranks", ("train_batch_size:", "100 x 3", "multiple of 300"),
         cli=("check-config", "{config}", "--world-size", "3")),
    Case("train_command_bad_set", ("--set 'optimizer'", "KEY=VALUE"),
         cli=("train", "--config", "{config}", "--set", "optimizer")),
]  # fmt: skip


def fill(value: Any, tmp: Path) -> Any:
    """``value`` with ``{tmp}`` replaced in every string."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: fill(v, tmp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, tmp) for v in value)
    return value


def base_config(tmp: Path) -> dict[str, Any]:
    """The tiny 2-rank run writing into ``tmp/out``."""
    cfg = json.loads(BASE.read_text())
    cfg["trainer"]["output_dir"] = str(tmp / "out")
    cfg["trainer"]["epochs"] = 2  # short, should a case ever train
    return cfg


def write_config(case: Case, tmp: Path) -> Path:
    path = tmp / "run.json"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
        return path
    if case.text is not None:
        path.write_text(case.text)
        return path
    cfg = base_config(tmp)
    for key, value in fill(case.file, tmp).items():
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    path.write_text(json.dumps(cfg, indent=2))
    return path


def argv_for(case: Case, tmp: Path) -> list[str]:
    if case.cli is not None:
        config = str(write_config(case, tmp))
        return [a.replace("{config}", config) for a in fill(case.cli, tmp)]
    args = list(fill(case.args, tmp))
    argv = [] if "--config" in args else ["--config", str(write_config(case, tmp))]
    for item in fill(case.sets, tmp):
        argv += ["--set", item]
    return argv + args


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def test_table_is_big_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30
    inputs = [(json.dumps(c.file, default=str), c.text, c.sets, c.args, c.cli) for c in CASES]
    assert len(set(inputs)) == len(inputs)


def test_base_config_is_accepted(tmp_path):
    from ds_twophase.config import validate_config

    run = validate_config(base_config(tmp_path), world_size=2)
    assert run.trainer is not None and run.probe is not None


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_error_line(case, tmp_path, capsys, clean_env):
    (tmp_path / "empty").mkdir()
    started = tdist.is_available() and tdist.is_initialized()
    status = (cli_main if case.cli is not None else train_main)(argv_for(case, tmp_path))
    out, err = capsys.readouterr()
    assert status == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert all(part in lines[0] for part in case.expect), lines[0]
    assert "Traceback" not in out + err
    # rejected before any process group was started or any output written
    assert started or not (tdist.is_available() and tdist.is_initialized())
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
def test_resume_into_a_changed_config(tmp_path, capsys, clean_env):
    """A short real run (one process, in-process), then ``--resume auto`` with another LR or
    seed: refused, naming the key; the unchanged config still resumes."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(base_config(tmp_path)))
    assert train_main(["--config", str(config), "--stop-after", "1"]) == 0
    assert (tmp_path / "out" / "checkpoints").is_dir()
    saved_config = (tmp_path / "out" / "config.json").read_text()
    capsys.readouterr()
    for change in ("optimizer.params.lr=1.0", "trainer.seed=1"):
        status = train_main(["--config", str(config), "--resume", "auto", "--set", change])
        out, err = capsys.readouterr()
        assert status == 2, err
        lines = error_lines(err)
        assert len(lines) == 1, err
        key = change.split("=")[0]
        assert lines[0].startswith("error: --resume:") and key in lines[0], lines[0]
        assert "Traceback" not in out + err
        assert (tmp_path / "out" / "config.json").read_text() == saved_config
    # the checkpoint is untouched: the unchanged config resumes it
    assert train_main(["--config", str(config), "--resume", "auto"]) == 0
    assert "continuing after epoch 1" in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_resume_auto_without_a_checkpoint_starts_over_with_fresh_metrics(
    tmp_path, capsys, clean_env
):
    """A run that died before its first checkpoint: --resume auto trains from epoch 1 again,
    and metrics.jsonl holds each epoch once."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(base_config(tmp_path)))
    assert train_main(["--config", str(config), "--stop-after", "1"]) == 0
    shutil.rmtree(tmp_path / "out" / "checkpoints")  # as if it died before saving
    capsys.readouterr()
    assert train_main(["--config", str(config), "--resume", "auto", "--stop-after", "2"]) == 0
    assert "the 1 epoch(s) in metrics.jsonl are trained again" in capsys.readouterr().out
    rows = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


@pytest.mark.timeout(300)
def test_resume_with_a_damaged_probe_vector(tmp_path, capsys, clean_env):
    """The only checkpoint has an unreadable probe_vector.npy: one line naming the file, exit 2,
    nothing trained or written."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(base_config(tmp_path)))
    assert train_main(["--config", str(config), "--stop-after", "1"]) == 0
    ckpt = tmp_path / "out" / "checkpoints" / "epoch0001"
    state = json.loads((ckpt / "ds_twophase.json").read_text())
    state["tensors"] = ["probe_vector"]
    (ckpt / "ds_twophase.json").write_text(json.dumps(state))
    (ckpt / "probe_vector.npy").write_bytes(b"not a numpy file")
    metrics_before = (tmp_path / "out" / "metrics.jsonl").read_text()
    capsys.readouterr()
    status = train_main(["--config", str(config), "--resume", "auto"])
    out, err = capsys.readouterr()
    assert status == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "no complete checkpoint" in lines[0] and "is unreadable" in lines[0]
    assert str(ckpt / "probe_vector.npy") in lines[0]
    assert "Traceback" not in out + err
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == metrics_before


# -- through the real 2-rank launcher -------------------------------------------------------


def run_group_leaving_nothing(cmd, *, env, cwd, timeout):
    """``_launch.run_group``, but it records which processes of the launch are still alive once
    the launcher has exited, before anything is killed (``result.survivors``)."""
    proc = start_group(cmd, env=env, cwd=cwd)
    marker = next(a for a in cmd if a.endswith("run.json"))
    try:
        out, err = proc.communicate(timeout=timeout)
        alive = [p for p in psutil.process_iter(["cmdline"]) if _belongs(p, proc.pid, marker)]
        # A rank the launcher killed may take a moment to go; one that stays is a leak.
        _, survivors = psutil.wait_procs(alive, timeout=10)
    finally:
        kill_group(proc)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    result.survivors = [" ".join(p.info["cmdline"] or []) for p in survivors]
    return result


def _belongs(p: psutil.Process, pgid: int, marker: str) -> bool:
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return os.getpgid(p.pid) == pgid or marker in (p.info["cmdline"] or [])
    except (psutil.Error, ProcessLookupError):
        return False


LAUNCHED = [
    Case("batch_not_divisible_by_2_ranks", ("train_batch_size:", "100 x 2", "multiple of 200"),
         sets=("train_batch_size=300",)),
    Case("unknown_probe_layer_2_ranks", ("scheduler.params.probe.layer:", "'fc'"),
         sets=("scheduler.params.probe.layer=fc9",)),
    Case("resume_path_missing_2_ranks", ("--resume:", "does not exist"),
         args=("--resume", "{tmp}/no-such-checkpoint")),
    Case("output_dir_cannot_be_created_2_ranks", ("trainer.output_dir:", "cannot create"),
         sets=("trainer.output_dir=/proc/forbidden/run",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every LAUNCHED case through the real launcher, the launches running side by side (each
    is mostly process start-up and imports): case id -> (tmp dir, finished launch)."""
    import _launch

    runs = {c.id: (c, tmp_path_factory.mktemp(c.id)) for c in LAUNCHED}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_launch, "run_group", run_group_leaving_nothing)
        for key in LAUNCHER_VARS:
            mp.delenv(key, raising=False)

        def launch(item):
            case, tmp = item
            return run_deepspeed(["ds_twophase.train", *argv_for(case, tmp)], module=True)

        with ThreadPoolExecutor(len(runs)) as pool:
            done = dict(zip(runs, pool.map(launch, runs.values()), strict=True))
    return {key: (runs[key][1], proc) for key, proc in done.items()}


@pytest.mark.multiproc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in LAUNCHED])
def test_bad_input_on_two_ranks(case, launched):
    tmp, proc = launched[case.id]
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-3000:]
    lines = error_lines(both)
    assert len(lines) == 1, both[-3000:]  # rank 0 reports, rank 1 stays quiet
    assert all(part in lines[0] for part in case.expect), lines[0]
    assert "Traceback" not in both
    assert proc.survivors == []
    assert not (tmp / "out").exists()
