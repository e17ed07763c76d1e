"""Run bookkeeping without processes: checkpoint completeness and pruning, metrics, resume checks,
and the probe's out-of-memory retry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ds_twophase.probe import HessianProbe, ProbeConfig, principal_eigenvalue
from ds_twophase.trainer import checkpoint
from ds_twophase.trainer.metrics import MetricsLog
from ds_twophase.trainer.resume import config_changes, resume_fingerprint


def fake_checkpoint(root, epoch, complete=True):
    path = root / checkpoint.tag_for(epoch)
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_text("x")
    if complete:
        checkpoint.write_json_atomic(path / checkpoint.STATE_FILE, {"epoch": epoch})
        checkpoint.write_json_atomic(path / checkpoint.COMPLETE_FILE, {"epoch": epoch})
    return path


def test_newest_complete_skips_interrupted_saves(tmp_path):
    for epoch, complete in [(2, True), (4, True), (6, False)]:
        fake_checkpoint(tmp_path, epoch, complete)
    seen = []
    epoch, path = checkpoint.newest_complete(tmp_path, warn=seen.append)
    assert epoch == 4 and path.name == "epoch0004"
    assert len(seen) == 1 and "epoch0006 is incomplete" in seen[0]
    assert checkpoint.newest_complete(tmp_path / "missing") is None


def test_scan_says_which_newer_checkpoints_it_skipped_and_why(tmp_path):
    for epoch, complete in [(2, True), (4, False), (6, False)]:
        fake_checkpoint(tmp_path, epoch, complete)
    found = checkpoint.scan(tmp_path)
    assert found.newest == (2, tmp_path / "epoch0002")
    assert [s.path.name for s in found.skipped] == ["epoch0006", "epoch0004"]
    assert not any(s.damaged for s in found.skipped)
    assert (
        found.skipped[0]
        .line()
        .endswith("is incomplete (interrupted while saving); using an older one")
    )
    assert checkpoint.scan(tmp_path / "missing") == checkpoint.Scan(None, [])


class Part:
    """A stateful part that remembers what it was given."""

    def __init__(self, state):
        self.state, self.loaded = state, None

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


def test_parts_round_trip_with_their_tensors_named_by_part():
    v, w = torch.arange(3.0), torch.ones(2)
    parts = {
        "probe": Part({"draws": 1, "vector": v}),
        "probe_every": Part({"draws": 2, "vector": w}),
        "partial": Part(None),  # nothing to save at an epoch end
    }
    states, tensors = checkpoint.pack_parts(parts)
    assert states == {"probe": {"draws": 1}, "probe_every": {"draws": 2}}
    assert set(tensors) == {"probe_vector", "probe_every_vector"}
    fresh = {name: Part(None) for name in parts}
    checkpoint.load_parts(fresh, {"epoch": 3, **states, "tensors": tensors})
    assert fresh["probe"].loaded == {"draws": 1, "vector": v}
    assert fresh["probe_every"].loaded == {"draws": 2, "vector": w}
    assert fresh["partial"].loaded is None  # not in the checkpoint: left fresh


def test_parts_read_the_unprefixed_rng_states_of_older_checkpoints():
    rng = torch.zeros(4, dtype=torch.uint8)
    saved = {"epoch": 5, "partial": {"micro_batches": 2}, "tensors": {"rng_rank0": rng}}
    assert checkpoint.part_states(saved) == {"partial": {"micro_batches": 2, "rng_rank0": rng}}


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for epoch, complete in [(1, True), (2, False), (3, True), (4, True), (5, True)]:
        fake_checkpoint(tmp_path, epoch, complete)
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch0004", "epoch0005"]
    assert (tmp_path / "latest").read_text() == "epoch0005"


def test_metrics_log_truncates_and_writes_null_for_non_finite(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for e in range(1, 5):
        log.append({"epoch": e, "hmax": math.nan if e == 2 else 1.0})
    assert [r["hmax"] for r in log.read()] == [1.0, None, 1.0, 1.0]
    json.loads((tmp_path / "m.jsonl").read_text().splitlines()[1])  # strict JSON
    log.truncate(2)
    assert [r["epoch"] for r in log.read()] == [1, 2]
    log.truncate(0)
    assert log.read() == []


def test_resume_fingerprint_ignores_bookkeeping_only():
    cfg = {
        "optimizer": {"params": {"lr": 0.1}},
        "trainer": {"seed": 0, "output_dir": "a", "checkpoint_every": 2},
    }
    other = json.loads(json.dumps(cfg))
    other["trainer"].update(output_dir="b", checkpoint_every=5)
    assert config_changes(resume_fingerprint(cfg), resume_fingerprint(other)) == []
    other["optimizer"]["params"]["lr"] = 0.2
    other["trainer"]["seed"] = 1
    assert config_changes(resume_fingerprint(cfg), resume_fingerprint(other)) == [
        "optimizer.params.lr: 0.1 -> 0.2",
        "trainer.seed: 0 -> 1",
    ]


def test_probe_out_of_memory_retries_with_half_the_micro_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    data = torch.utils.data.TensorDataset(x, y)
    sizes = []

    def loss_fn(out, target):
        sizes.append(len(target))
        if len(target) > 8:
            raise torch.OutOfMemoryError("pretend the probe does not fit")
        return F.cross_entropy(out, target)

    probe = HessianProbe(
        data, loss_fn, ProbeConfig(max_iters=50, tol=0), batch_size=32, micro_batch_size=16, seed=0
    )
    outcome = probe(model, "cpu")
    assert outcome.ok, outcome.error
    assert 16 in sizes and 8 in sizes
    xs, ys = x[probe.indices], y[probe.indices]
    batches = [(xs[i : i + 8], ys[i : i + 8]) for i in range(0, 32, 8)]
    expected = principal_eigenvalue(model, F.cross_entropy, batches, max_iters=50, tol=0)
    assert outcome.value == pytest.approx(expected.value, rel=1e-5)


def test_probe_out_of_memory_twice_is_reported_not_raised():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))

    def loss_fn(out, target):
        raise torch.OutOfMemoryError("never fits")

    probe = HessianProbe(data, loss_fn, ProbeConfig(), batch_size=16, micro_batch_size=8, seed=0)
    outcome = probe(model, "cpu")
    assert not outcome.ok and math.isnan(outcome.value)
    assert "retried with micro_batch_size 4" in outcome.error
