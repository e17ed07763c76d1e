"""The metrics sink chosen once per rank: rank 0 writes config.json, metrics.jsonl and the
monitor; other ranks get one that writes nothing (``test_two_ranks_plateau_switch_decay`` in
test_trainer.py checks that a 2-rank run's file has one row per epoch)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ds_twophase.trainer.metrics import MetricsLog
from ds_twophase.trainer.metrics_sink import RankZeroSink, metrics_sink


def test_rank_zero_gets_the_writing_sink(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    engine = SimpleNamespace(monitor=None)
    sink = metrics_sink(log, engine, tmp_path / "run" / "checkpoints")  # one process: rank 0
    assert isinstance(sink, RankZeroSink)
    sink.start(0, {"trainer": {"epochs": 3}})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"trainer": {"epochs": 3}}
    for epoch in (1, 2, 3):
        sink.write({"epoch": epoch, "train_loss": 1.0 / epoch})
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    sink.resumed(2)  # a resume after epoch 2 trains epoch 3 again
    assert [r["epoch"] for r in log.read()] == [1, 2]
