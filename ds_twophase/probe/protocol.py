"""The epoch-end Hessian probe across ranks: the rank0 and sharded modes of ``measure_hmax``.

``measure_hmax`` is called by every rank of the data-parallel group and returns the same
``ProbeOutcome`` on all of them; it never raises for a failure inside the probe and never leaves
a rank waiting.

* ``"rank0"``: rank 0 builds the micro-batches from ``dataset[indices]`` and runs
  ``principal_eigenvalue``; its value or its error is broadcast. The other ranks wait in the
  broadcast (for as long as the process group's timeout allows).
* ``"sharded"``: micro-batch ``j`` of the probe batch goes to rank ``j % world_size`` (so both
  modes see the same micro-batches and agree even with ``bn_mode="train"``); every HVP and the
  sample count are summed over ranks, so all ranks follow the same Lanczos iteration. Failure
  protocol: each HVP reduction is preceded by a small all-reduce of ``[failed, count]``. A rank
  whose local work raises (while building its micro-batches, during setup or in an iteration)
  still takes part in that control all-reduce with ``failed = 1``; every rank then sees the
  failure in the same round and stops, so the number of collectives matches on all ranks. The
  stopping decision (``tol``, ``max_iters``, non-finite values) depends only on all-reduced
  values, which are identical on every rank. BatchNorm running statistics, which data
  parallelism does not synchronise, are broadcast from rank 0 first. A final
  ``all_gather_object`` of each rank's outcome gives every rank the same value and the full
  list of errors. Under ZeRO stage 3 the
  parameters are gathered on every rank for the duration of the probe (full parameter memory)
  and DeepSpeed's module hooks are set aside meanwhile.

Fault injection for reliability tests: ``DS_TWOPHASE_PROBE_FAIL`` (parsed in
:mod:`ds_twophase.faults`, with the other fault variables) raises on a rank or poisons the loss
at a chosen iteration; the ``fail_hook`` argument of ``measure_hmax`` does the same from code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from ds_twophase import dist, faults
from ds_twophase.errors import Problem
from ds_twophase.probe.config import ProbeConfig
from ds_twophase.probe.eigen import EigenResult, principal_eigenvalue
from ds_twophase.probe.functional import LossFn, to_device
from ds_twophase.probe.layer import preserve_rng_state, resolve_layer
from ds_twophase.probe.outcome import ProbeOutcome


class ProbePeerFailure(RuntimeError):
    """Raised on the ranks of a sharded probe when some rank announced a failure."""


class _ShardedReduce:
    """The ``hvp_reduce`` hook of sharded mode: a control all-reduce ``[failed, count]``, then,
    if nobody failed, the all-reduce of the HVP vector."""

    def __init__(self, group: Any):
        self.group = group

    def __call__(self, vector: torch.Tensor | None, count: float) -> tuple[torch.Tensor, float]:
        failed, total = dist.all_reduce_sums([float(vector is None), float(count)], self.group)
        if failed > 0 or vector is None:  # a None vector is counted in failed
            raise ProbePeerFailure(f"probe failed on {int(failed)} rank(s)")
        return dist.all_reduce_sum_(vector, self.group), total


FailHook = faults.FailHook


def measure_hmax(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    indices: Sequence[int],
    cfg: ProbeConfig,
    *,
    device: torch.device | str,
    collate: Callable[[list[Any]], Any] | None = None,
    group: Any = None,
    zero_stage: int = 0,
    fail_hook: FailHook | None = None,
    v0: torch.Tensor | None = None,
) -> ProbeOutcome:
    """Measure hmax on the probe samples ``dataset[indices]``; call on every rank of ``group``.

    ``model`` is the plain module (``engine.module`` under DeepSpeed); ``dataset[i]`` must give
    an ``(input, target)`` pair, and ``collate`` (default ``torch.utils.data.default_collate``)
    turns a list of them into batched ``(inputs, targets)``. Pass the training set preferably
    without random augmentation; any augmentation that is applied is drawn from ``cfg.seed``,
    so it is the same at every probe, and the training RNG streams are not consumed.
    ``cfg.micro_batch_size`` must be set (the trainer fills it from the DeepSpeed config).
    ``zero_stage``: DeepSpeed's ZeRO stage; under stage 3 only "sharded" works (it gathers the
    partitioned parameters on every rank for the probe's duration).
    ``v0``: start vector (see ``principal_eigenvalue``), e.g. the ``vector`` of the previous
    outcome; in "sharded" mode every rank must pass the same one.
    Returns the same ``ProbeOutcome`` on every rank. Raises ``ValueError`` (on every rank, before
    any collective) only for invalid arguments, e.g. mode "rank0" under ZeRO stage 3.
    """
    if not isinstance(cfg, ProbeConfig):
        raise ValueError(f"cfg must be a ProbeConfig, got {type(cfg).__name__}")
    if cfg.micro_batch_size is None:
        raise ValueError("probe.micro_batch_size is None: set it (DeepSpeed's micro-batch size)")
    if not indices:
        raise ValueError("indices is empty: the probe needs at least one sample")
    if zero_stage == 3 and cfg.mode == "rank0":
        raise ValueError(
            'probe.mode "rank0" cannot run under ZeRO stage 3 (a forward on rank 0 alone '
            'deadlocks): use "sharded"'
        )
    problem = check_probe_model(model, cfg)
    if problem is not None:
        raise ValueError(str(problem))
    env_hook, nan_loss = faults.probe_fail_from_env()
    fail_hook = fail_hook or env_hook
    if nan_loss:
        loss_fn = _nan_loss(loss_fn)
    job = _ProbeJob(
        model, loss_fn, dataset, list(indices), cfg, torch.device(device), collate, fail_hook, v0
    )
    if cfg.mode == "rank0":
        return _rank0(job, group)
    return _sharded(job, group, zero_stage)


def check_probe_model(model: nn.Module, cfg: ProbeConfig) -> Problem | None:
    """Why ``cfg`` cannot probe ``model`` (keyed ``scheduler.params.probe.bn_mode``, with the
    fix), else ``None``.

    ``bn_mode: "train"`` with ``SyncBatchNorm`` in ``"rank0"`` mode is refused: in train mode
    those layers all-reduce their batch statistics in every forward, and only rank 0 runs the
    probe's forwards, so the other ranks would never join and the run would hang. Call it where
    the model is first known: ``ds_twophase.initialize`` and the trainer (raised as a
    ``ConfigError``, exit 2) and ``measure_hmax`` (before any collective, on every rank).
    """
    if cfg.bn_mode != "train" or cfg.mode != "rank0":
        return None
    sync = [
        n or type(model).__name__
        for n, m in model.named_modules()
        if isinstance(m, nn.SyncBatchNorm)
    ]
    if not sync:
        return None
    return Problem(
        "scheduler.params.probe.bn_mode",
        f'"train" with SyncBatchNorm ({sync[0]}) deadlocks in probe.mode "rank0" (its batch '
        'statistics are all-reduced, but only rank 0 runs the probe); set bn_mode to "eval"',
    )


@dataclasses.dataclass
class _ProbeJob:
    model: nn.Module
    loss_fn: LossFn
    dataset: Any
    indices: list[int]
    cfg: ProbeConfig
    device: torch.device
    collate: Callable[[list[Any]], Any] | None
    fail_hook: FailHook | None
    v0: torch.Tensor | None = None

    def chunks(self) -> list[list[int]]:
        mb = self.cfg.micro_batch_size
        if mb is None:  # measure_hmax refuses this before it builds a job
            raise ValueError("probe.micro_batch_size is None")
        return [self.indices[i : i + mb] for i in range(0, len(self.indices), mb)]

    def load(self, chunk: list[int]) -> tuple[Any, Any]:
        """One micro-batch on the host (pinned when the probe runs on a GPU, so that moving it
        there is a fast asynchronous copy); the probe moves it to the device when it uses it."""
        batch = (self.collate or default_collate)([self.dataset[i] for i in chunk])
        inputs, targets = batch
        if self.device.type == "cuda":
            inputs, targets = _pin(inputs), _pin(targets)
        return inputs, targets

    def prepare(self, chunks: list[list[int]]) -> tuple[list[tuple[Any, Any]], list[str]]:
        """Load this rank's micro-batches (kept on the host: the device sees one at a time, so
        the probe's device memory is bounded by the micro-batch, which the out-of-memory retry
        halves) and resolve the layer (no collectives)."""
        with preserve_rng_state():
            # Augmentation (if any) is drawn from the probe seed: the same batch at every probe.
            _seed_all(self.seed)
            batches = [self.load(c) for c in chunks]
            auto = isinstance(self.cfg.layer, str) and self.cfg.layer == "auto"
            example = to_device(self.load(self.indices[:2])[0], self.device) if auto else None
        return batches, resolve_layer(self.model, self.cfg.layer, example)

    def probe(
        self,
        batches: list[tuple[Any, Any]],
        layer: list[str],
        rank: int,
        hvp_reduce: Any = None,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> EigenResult:
        """Run ``principal_eigenvalue`` with the config's settings."""
        cfg = self.cfg
        fail = self.fail_hook
        hook = None if fail is None else (lambda k: fail(rank, k))
        budget = None if cfg.max_graph_mb is None else int(cfg.max_graph_mb * 2**20)
        return principal_eigenvalue(
            self.model, self.loss_fn, batches, layer, max_iters=cfg.max_iters, tol=cfg.tol,
            method=cfg.method, bn_mode=cfg.bn_mode, seed=self.seed, hvp_reduce=hvp_reduce,
            max_graph_bytes=budget, iteration_hook=hook, buffers=buffers, v0=self.v0,
        )  # fmt: skip

    @property
    def seed(self) -> int:
        """The probe seed (the caller fills ``cfg.seed`` with the run's seed)."""
        return self.cfg.seed or 0


def _rank0(job: _ProbeJob, group: Any) -> ProbeOutcome:
    outcome, vector = None, None
    if dist.get_rank(group) == 0:
        start = time.perf_counter()
        try:
            res = job.probe(*job.prepare(job.chunks()), 0)
            outcome = _outcome(res.value, time.perf_counter() - start, None, res)
            vector = res.vector
        except Exception as e:  # reported to every rank, never raised
            outcome = _outcome(
                math.nan, time.perf_counter() - start, f"rank 0: {_describe(e)}", None
            )
    return _with_vector(dist.broadcast_object(outcome, src=0, group=group), vector)


def _sharded(job: _ProbeJob, group: Any, zero_stage: int) -> ProbeOutcome:
    if zero_stage != 3:
        return _sharded_probe(job, group)
    # ZeRO-3 partitions every parameter: gather full values on all ranks for the probe, and
    # hide DeepSpeed's module hooks, which would try to fetch/release the substitute tensors
    # the functional forward passes in. Costs the full parameter memory during the probe.
    with dist.gathered_parameters(job.model.parameters()), _module_hooks_removed(job.model):
        return _sharded_probe(job, group)


@contextlib.contextmanager
def _module_hooks_removed(model: nn.Module) -> Iterator[None]:
    kinds = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    saved = [(m, kind, dict(getattr(m, kind))) for m in model.modules() for kind in kinds]
    try:
        for m, kind, _ in saved:
            getattr(m, kind).clear()
        yield
    finally:
        for m, kind, hooks in saved:
            getattr(m, kind).clear()
            getattr(m, kind).update(hooks)


def _sharded_probe(job: _ProbeJob, group: Any) -> ProbeOutcome:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    reduce = _ShardedReduce(group)
    start = time.perf_counter()
    # Data parallelism does not synchronise BatchNorm running statistics: every rank probes with
    # rank 0's, as rank0 mode (and a checkpoint, which stores rank 0's) would.
    buffers = None
    if world > 1:
        own = {k: v.detach().cpu() for k, v in job.model.named_buffers()}
        buffers = dist.broadcast_object(own, src=0, group=group)
    try:
        batches, layer = job.prepare(job.chunks()[rank::world])
    except Exception as e:
        # Peers are (or will be) in the first control all-reduce: join it as failed.
        try:
            reduce(None, 0.0)
        except ProbePeerFailure:
            pass
        local = _outcome(
            math.nan, time.perf_counter() - start, f"rank {rank}: {_describe(e)}", None
        )
        return _merge(dist.all_gather_object(local, group=group))
    vector = None
    try:
        # From here principal_eigenvalue announces its own failures to the peers.
        res = job.probe(batches, layer, rank, hvp_reduce=reduce, buffers=buffers)
        local = _outcome(res.value, time.perf_counter() - start, None, res)
        vector = res.vector
    except ProbePeerFailure:
        local = _outcome(math.nan, time.perf_counter() - start, None, None)
    except Exception as e:
        local = _outcome(
            math.nan, time.perf_counter() - start, f"rank {rank}: {_describe(e)}", None
        )
    return _with_vector(_merge(dist.all_gather_object(local, group=group)), vector)


def _with_vector(outcome: ProbeOutcome, vector: torch.Tensor | None) -> ProbeOutcome:
    # Attached after the exchange so that the vector never travels between ranks.
    outcome.vector = vector if outcome.ok else None
    return outcome


def _outcome(value: float, seconds: float, error: str | None, res: Any) -> ProbeOutcome:
    if error is None and res is not None and not math.isfinite(value):
        error = f"non-finite eigenvalue estimate ({value})"
    return ProbeOutcome(
        value=value if error is None else math.nan,
        seconds=seconds,
        error=error,
        layer=None if res is None else list(res.layer),
        iterations=0 if res is None else res.iterations,
        num_samples=0 if res is None else res.num_samples,
        residual=math.nan if res is None or error is not None else res.residual,
        hmax_se=math.nan if res is None or error is not None else res.hmax_se,
        loss=math.nan if res is None or error is not None else res.loss,
        loss_se=math.nan if res is None or error is not None else res.loss_se,
    )


def _merge(outcomes: list[ProbeOutcome]) -> ProbeOutcome:
    errors = [o.error for o in outcomes if o.error]
    if not errors and any(o.layer is None for o in outcomes):
        errors = ["probe failed on a peer rank without a message"]
    first = outcomes[0]
    return ProbeOutcome(
        value=math.nan if errors else first.value,
        seconds=max(o.seconds for o in outcomes),
        error="; ".join(dict.fromkeys(errors)) if errors else None,
        layer=first.layer,
        iterations=first.iterations,
        num_samples=first.num_samples,
        residual=math.nan if errors else first.residual,
        hmax_se=math.nan if errors else first.hmax_se,
        loss=math.nan if errors else first.loss,
        loss_se=math.nan if errors else first.loss_se,
    )


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())  # one line
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _nan_loss(loss_fn: LossFn) -> LossFn:
    def poisoned(outputs: Any, targets: Any) -> torch.Tensor:
        return loss_fn(outputs, targets) * math.nan

    return poisoned


def _pin(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, (list, tuple)):
        return type(x)(_pin(v) for v in x)
    if isinstance(x, dict):
        return {k: _pin(v) for k, v in x.items()}
    return x
