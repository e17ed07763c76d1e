"""Two real ranks through the deepspeed launcher: rank0 vs sharded probe, failures, NaNs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _launch import run_deepspeed

SCRIPT = Path(__file__).parent / "scripts" / "probe_dist_check.py"


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * abs(b)


def launch() -> dict[int, dict]:
    """Each rank's results, by rank."""
    proc = run_deepspeed([SCRIPT], num_ranks=2, timeout=170)
    # The launcher interleaves the ranks' stdout, sometimes without a newline between lines.
    decoder = json.JSONDecoder()
    parts = proc.stdout.split("PROBE_DIST_RESULT ")[1:]
    results = [decoder.raw_decode(p)[0] for p in parts]
    assert proc.returncode == 0 and len(results) == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r["rank"]: r for r in results}


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_rank0_and_sharded_agree_and_failures_reach_every_rank():
    ranks = launch()
    r0, r1 = ranks[0], ranks[1]
    ref, ref_train = r0["ref"], r0["ref_train"]
    # The ranks' BatchNorm running stats differ after training; both modes must use rank 0's.
    assert not close(r1["ref"], ref, 1e-6)
    for r in (r0, r1):
        # Both modes agree with the single-process reference, in both BatchNorm modes.
        for key, truth in (("rank0", ref), ("sharded", ref), ("rank0_train", ref_train),
                           ("sharded_train", ref_train), ("after", ref)):  # fmt: skip
            out = r[key]
            assert out["error"] is None and close(out["value"], truth), (key, out, truth)
            assert out["iterations"] == 12 and out["num_samples"] == 44, (key, out)
        # The standard errors and the probe-batch loss: sums over the ranks' samples in sharded
        # mode, the same as one process computes.
        for key, truth in (("rank0", r0["ref_errors"]), ("sharded", r0["ref_errors"]),
                           ("rank0_train", r0["ref_train_errors"]),
                           ("sharded_train", r0["ref_train_errors"])):  # fmt: skip
            got = [r[key]["hmax_se"], r[key]["loss"], r[key]["loss_se"]]
            assert all(close(a, b, 1e-4) for a, b in zip(got, truth, strict=True)), (key, got)
        fd = r["sharded_fd64"]
        assert fd["error"] is None and close(fd["value"], r0["ref64"], 1e-5), fd
        # A failure on one rank is reported on every rank; nobody hangs.
        assert r["rank0_fail"]["error"].startswith("rank 0: RuntimeError: injected probe failure")
        for key in ("sharded_rank1_setup", "sharded_rank1_iter3"):
            assert r[key]["error"].startswith("rank 1: RuntimeError: injected"), (key, r[key])
            assert "rank 0" not in r[key]["error"]
        both = r["sharded_all_iter2"]["error"]
        assert both.startswith("rank 0: RuntimeError") and "; rank 1: RuntimeError" in both
        assert r["sharded_load_fail"]["error"].startswith("rank 1: OSError: unreadable sample")
        for key in ("rank0_nan", "sharded_nan"):
            assert math.isnan(r[key]["value"]) and "non-finite" in r[key]["error"], (key, r[key])
        for key in (
            "rank0_fail",
            "sharded_rank1_setup",
            "sharded_rank1_iter3",
            "sharded_all_iter2",
            "sharded_load_fail",
        ):
            assert math.isnan(r[key]["value"]), key
        assert r["unchanged"]
        # A warm start from an eigenvector converges in fewer HVPs to the same value.
        for key in ("sharded_warm", "rank0_warm"):
            out = r[key]
            assert out["error"] is None and close(out["value"], ref), (key, out)
            assert out["iterations"] < 12, (key, out)
    # The eigenvector stays where it was computed: rank 0 in rank0 mode, every rank (the same
    # vector) in sharded mode; failed probes leave none.
    assert r0["rank0"]["vector"] is not None and r1["rank0"]["vector"] is None
    assert r0["sharded"]["vector"] == r1["sharded"]["vector"]
    assert abs(r0["sharded"]["vector"][0] - 1) < 1e-5
    for r in (r0, r1):
        assert r["sharded_rank1_iter3"]["vector"] is None and r["rank0_fail"]["vector"] is None
    # ZeRO-3: the sharded probe sees the full (gathered) parameters; rank0 mode is refused.
    for r in (r0, r1):
        z3 = r["zero3_sharded"]
        assert z3["error"] is None and close(z3["value"], r0["zero3_ref"]), z3
        assert r["zero3_partitioned_after"] and r["zero3_trains_after"]
        assert 'use "sharded"' in r["zero3_rank0_refused"]
    # Every rank returned the identical outcome, value for value (seconds aside).
    for key in r0:
        if isinstance(r0[key], dict):
            a = {k: v for k, v in r0[key].items() if k not in ("seconds", "vector")}
            b = {k: v for k, v in r1[key].items() if k not in ("seconds", "vector")}
            assert json.dumps(a) == json.dumps(b), (key, a, b)
