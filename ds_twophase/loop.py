"""The trainer's epoch loop: data, DeepSpeed engine, epoch-end decision, evaluation, outputs."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from . import checkpoint, dist, faults
from .config import RunConfig, resolve_batch
from .data import build_datasets
from .engine import initialize_run, load_checkpoint
from .errors import ConfigError
from .metrics import MetricsLog
from .models import build_model
from .probe import HessianProbe, RankDisagreement, epoch_end
from .schedulers import EpochScheduler

# Config keys that may change between a run and its resume without changing the training.
RESUME_FREE_KEYS = (
    "trainer.output_dir",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.eval_every",
    "trainer.on_nonfinite_loss",
    "trainer.dataset.root",
    "steps_per_print",
    "wall_clock_breakdown",
    "tensorboard",
    "csv_monitor",
    "wandb",
    "comet",
    "flops_profiler",
)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested config."""
    if isinstance(cfg, dict) and cfg:
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): cfg}


def resume_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The config leaves that must not change when a run is resumed."""
    return {
        key: value
        for key, value in flatten(resolved).items()
        if not any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)
    }


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable ``key: old -> new`` for every key that differs."""
    keys = sorted(set(saved) | set(now))
    missing = object()
    out = []
    for key in keys:
        a, b = saved.get(key, missing), now.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(a)} -> {show(b)}")
    return out


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss, ranks disagreeing); the message says why."""


@dataclass
class RunResult:
    """What a finished run reports."""

    epochs: int
    """Epochs completed (including those before a resume)."""
    val_accuracy: float | None
    """Validation accuracy after the last epoch."""
    output_dir: Path
    """Where the run's files are."""


def log(message: str) -> None:
    """Print on rank 0 only."""
    if dist.is_rank_zero():
        print(message, flush=True)


def warn(message: str) -> None:
    """Print a ``warning:`` line on stderr, on rank 0 only."""
    if dist.is_rank_zero():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; a :class:`ConfigError` it
    raises is raised on every rank (decisions from files that only rank 0 may see)."""
    outcome: tuple[str, Any] | None = None
    if dist.is_rank_zero():
        try:
            outcome = ("ok", fn())
        except ConfigError as exc:
            outcome = ("error", exc.messages)
    outcome = dist.broadcast_object(outcome)
    if outcome[0] == "error":
        raise ConfigError(outcome[1])
    return outcome[1]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and accelerators) deterministically."""
    torch.manual_seed(seed)


def make_loader(dataset: Any, sampler: DistributedSampler, micro: int, workers: int) -> DataLoader:
    """Micro-batches of ``micro`` samples from ``sampler``; tensor datasets are indexed a whole
    batch at a time (one gather per tensor instead of one Python call per sample)."""
    if isinstance(dataset, TensorDataset):
        batches = BatchSampler(sampler, micro, drop_last=True)
        return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers)
    return DataLoader(
        dataset, sampler=sampler, batch_size=micro, drop_last=True, num_workers=workers
    )


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy computed in fp32 (bf16 logits are upcast)."""
    return F.cross_entropy(outputs.float(), targets)


def to_engine(engine: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``(inputs, targets)`` to the engine's device and floating inputs to its dtype."""
    x, y = batch
    dtype = next(engine.module.parameters()).dtype
    x = x.to(engine.device, dtype=dtype if x.is_floating_point() else x.dtype, non_blocking=True)
    return x, y.to(engine.device, non_blocking=True)


def evaluate(engine: Any, dataset: Any, batch_size: int) -> tuple[float, float]:
    """Validation loss and accuracy over the whole split, sharded over ranks without padding."""
    rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    model = engine.module
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    correct = torch.zeros((), dtype=torch.float64, device=engine.device)
    with torch.no_grad():
        for batch in _full_batches(dataset, indices, batch_size):
            x, y = to_engine(engine, batch)
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(dim=1) == y).sum().double()
    model.train(was_training)
    total_loss, total_correct, count = dist.all_reduce_sums(
        [loss_sum.item(), correct.item(), float(len(indices))]
    )
    return total_loss / count, total_correct / count


def _full_batches(dataset: Any, indices: list[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        if isinstance(dataset, TensorDataset):
            yield dataset[chunk]
        else:
            yield torch.utils.data.default_collate([dataset[i] for i in chunk])


class Trainer:
    """Runs one validated config end to end on every rank: ``Trainer(run).fit(resume=...)``."""

    def __init__(self, run: RunConfig):
        if run.trainer is None:
            raise ConfigError(
                "trainer: the config has no trainer section; add one (dataset, model, epochs)"
            )
        self.run = run
        self.tc = run.trainer
        self.out = Path(self.tc.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        world = dist.get_world_size()
        self.train_batch, self.micro, self.gas = resolve_batch(run.deepspeed, world)
        seed_everything(self.tc.seed)
        self.splits = self._build_data()
        self.model = build_model(self.tc.model, self.splits.num_classes, self.splits.input_shape)
        if run.deepspeed.get("bf16", {}).get("enabled"):
            # DeepSpeed casts parameters but not buffers; BatchNorm on CPU needs both in bf16.
            self.model.to(torch.bfloat16)
        self.sampler = DistributedSampler(
            self.splits.train,
            num_replicas=world,
            rank=dist.get_rank(),
            shuffle=True,
            seed=self.tc.seed,
            drop_last=True,
        )
        self.steps_per_epoch = (len(self.sampler) // self.micro) // self.gas
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"train_batch_size: {len(self.splits.train)} training samples give no full step of "
                f"{self.train_batch} samples per epoch; lower the batch size or raise trainer.dataset.train_size"
            )
        self.loader = make_loader(self.splits.train, self.sampler, self.micro, self.tc.num_workers)
        self.engine, _, _, self.scheduler = initialize_run(
            run, model=self.model, total_epochs=self.tc.epochs, steps_per_epoch=self.steps_per_epoch
        )
        self.probe = None
        if run.probe is not None:
            self.probe = HessianProbe(
                self.splits.train,
                cross_entropy,
                run.probe,
                batch_size=self.train_batch,
                micro_batch_size=self.micro,
                seed=self.tc.seed,
                zero_stage=run.zero_stage,
            )
        self.metrics = MetricsLog(self.out / "metrics.jsonl")

    def _build_data(self):
        # Rank 0 generates and caches the data set first so the other ranks only read it.
        if dist.is_rank_zero():
            splits = build_datasets(self.tc.dataset)
        dist.barrier()
        if not dist.is_rank_zero():
            splits = build_datasets(self.tc.dataset)
        return splits

    # -- resume --------------------------------------------------------------------------
    def resume(self, target: str) -> int:
        """Load a checkpoint (``auto``: newest complete one in the run's directory); returns the
        epoch it holds, or 0 when ``auto`` finds none. Rank 0 chooses and every rank follows, so
        ranks never disagree about where they resume."""
        choice = on_rank_zero(lambda: self._choose_checkpoint(target))
        if choice is None:
            self.metrics.truncate(0)  # epochs no checkpoint kept are trained again
            return 0
        epoch, path, state = choice
        path = Path(path)
        load_checkpoint(self.engine, path.parent, tag=path.name)
        if self.probe is not None and state.get("probe") is not None:
            vector = state["tensors"].get("probe_vector")
            self.probe.load_state_dict({**state["probe"], "vector": vector})
        self.metrics.truncate(epoch)
        log(f"resume: continuing after epoch {epoch} from {path}")
        return epoch

    def _choose_checkpoint(self, target: str) -> tuple[int, str, dict[str, Any]] | None:
        if target == "auto":
            found = checkpoint.newest_complete(self.ckpt_dir, warn=warn)
            if found is None:
                if checkpoint.checkpoint_dirs(self.ckpt_dir):
                    raise ConfigError(
                        f"--resume: no complete checkpoint in {self.ckpt_dir} (all were interrupted "
                        "while saving); remove the directory to start over"
                    )
                done = len(self.metrics.read())
                dropped = (
                    f" (the {done} epoch(s) in metrics.jsonl are trained again)" if done else ""
                )
                log(f"resume: no checkpoint in {self.ckpt_dir}; starting from scratch{dropped}")
                return None
            epoch, path = found
            state = checkpoint.read_state(path)
        else:
            path = Path(target)
            if not checkpoint.is_complete(path):
                raise ConfigError(
                    f"--resume: '{target}' is not a complete ds_twophase checkpoint directory"
                )
            state = checkpoint.read_state(path)
            epoch = state["epoch"]
        state["tensors"] = checkpoint.read_tensors(path, state.get("tensors", []))
        changes = config_changes(state.get("config", {}), resume_fingerprint(self.run.resolved))
        if changes:
            more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
            raise ConfigError(
                f"--resume: the config changed since {path.name}: {'; '.join(changes[:3])}{more}; "
                "restore these values or train into a new trainer.output_dir"
            )
        return epoch, str(path), state

    def _check_fresh_output_dir(self) -> None:
        """Refuse to start a new run over an existing one (nothing is ever overwritten)."""
        if self.metrics.read() or checkpoint.checkpoint_dirs(self.ckpt_dir):
            raise ConfigError(
                f"trainer.output_dir: '{self.out}' already holds a run; continue it with "
                "--resume auto, or choose another output_dir"
            )

    # -- the loop ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One epoch of exactly ``steps_per_epoch`` optimizer steps.

        Returns the mean training loss over all ranks and micro-batches, and (with
        ``on_nonfinite_loss = "skip"``) the number of micro-batches skipped on all ranks.
        """
        self.sampler.set_epoch(epoch)
        # Per-epoch seeds make a resumed run draw the same random numbers (dropout, augmentation).
        rank = dist.get_rank()
        torch.manual_seed(self.tc.seed * 100_003 + epoch * 1009 + rank)
        engine = self.engine
        engine.train()
        skip = self.tc.on_nonfinite_loss == "skip"
        loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
        finite = 0
        micro_batches = self.steps_per_epoch * self.gas
        bar = self._progress(epoch, micro_batches)
        for i, batch in enumerate(self.loader):
            if i == micro_batches:
                break
            x, y = to_engine(engine, batch)
            out = engine(x)
            loss = cross_entropy(out, y)
            if faults.nan_loss_at(epoch, i, rank):
                loss = loss * math.nan
            if skip and not math.isfinite(loss.item()):
                # Backward through a zero loss keeps DeepSpeed's accumulation and gradient
                # all-reduce in step on every rank while this micro-batch contributes nothing.
                engine.backward(out.sum() * 0.0)
            else:
                engine.backward(loss)
                loss_sum += loss.detach().double()
                finite += 1
            engine.step()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        # Data parallelism does not synchronise BatchNorm statistics: give every rank rank 0's,
        # which the checkpoint stores, so evaluation and a resumed run see the same model.
        dist.broadcast_tensors_(engine.module.buffers())
        total, count = dist.all_reduce_sums([loss_sum.item(), float(finite)])
        skipped = int(dist.get_world_size() * micro_batches - count)
        if count == 0:
            return math.nan, skipped
        return total / count, skipped

    def _progress(self, epoch: int, total: int):
        show = self.tc.progress == "on" or (self.tc.progress == "auto" and sys.stderr.isatty())
        if not show or not dist.is_rank_zero():
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}", leave=False, mininterval=2.0, delay=3.0)

    def fit(self, resume: str | None = None, stop_after: int | None = None) -> RunResult:
        """Train to ``trainer.epochs`` (or save and return after epoch ``stop_after``)."""
        if resume:
            start = self.resume(resume)
        else:
            on_rank_zero(self._check_fresh_output_dir)
            start = 0
        # Only once the checks passed: a refused run must not overwrite the existing run's file.
        if dist.is_rank_zero():
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.run.resolved, indent=2) + "\n")
        val_acc = None
        last = self.tc.epochs
        end_at = last if stop_after is None else min(stop_after, last)
        for epoch in range(start + 1, end_at + 1):
            t0 = time.perf_counter()
            train_loss, skipped = self.train_epoch(epoch)
            if not math.isfinite(train_loss):
                kept = checkpoint.newest_complete(self.ckpt_dir, warn=lambda _: None)
                where = f"the newest checkpoint is {kept[1]}" if kept else "no checkpoint was saved"
                raise TrainingStopped(
                    f"epoch {epoch}: training loss is {train_loss}; stopping without saving ({where}); "
                    'lower the LR, set gradient_clipping, or set trainer.on_nonfinite_loss="skip"'
                )
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            if self.tc.on_nonfinite_loss == "skip":
                row["skipped_micro_batches"] = skipped
                if skipped:
                    warn(f"epoch {epoch}: skipped {skipped} micro-batch(es) with a non-finite loss")
            probe_seconds = 0.0
            if isinstance(self.scheduler, EpochScheduler):
                with warnings.catch_warnings():
                    # The decision's warning is logged once below, by rank 0 only.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    try:
                        end = epoch_end(self.engine, train_loss, self.probe)
                    except RankDisagreement as exc:
                        raise TrainingStopped(str(exc)) from None
                rec = end.record
                if rec.warning:
                    warn(rec.warning)
                if end.probe is not None:
                    probe_seconds = end.probe.seconds
                row.update(
                    phase=rec.phase,
                    hmax=rec.hmax,
                    decision=rec.decision,
                    warning=rec.warning,
                    probe_error=None if end.probe is None else end.probe.error,
                    probe_hvps=None if end.probe is None else end.probe.iterations,
                    probe_residual=None
                    if end.probe is None or not end.probe.ok
                    else end.probe.residual,
                )
            else:
                row.update(phase=None, hmax=None, decision=None)
            row["lr"] = self.engine.get_lr()[0]
            if epoch % self.tc.eval_every == 0 or epoch == last:
                row["val_loss"], row["val_accuracy"] = evaluate(
                    self.engine, self.splits.val, 4 * self.micro
                )
                val_acc = row["val_accuracy"]
            else:
                row["val_loss"] = row["val_accuracy"] = None
            row["probe_seconds"] = probe_seconds
            row["epoch_seconds"] = time.perf_counter() - t0
            if dist.is_rank_zero():
                self.metrics.append(row)
            log(_epoch_line(row, last))
            every = self.tc.checkpoint_every
            if epoch == end_at or (every and epoch % every == 0):
                self._save(epoch)
        if end_at < last:
            log(f"stopped after epoch {end_at} of {last}; continue with --resume auto ({self.out})")
        else:
            if val_acc is None:  # resumed after the last epoch: nothing was trained here
                val_acc = evaluate(self.engine, self.splits.val, 4 * self.micro)[1]
            log(f"done: {last} epochs, final test accuracy {val_acc:.4f} ({self.out})")
        return RunResult(epochs=max(end_at, start), val_accuracy=val_acc, output_dir=self.out)

    def _save(self, epoch: int) -> None:
        probe = None if self.probe is None else self.probe.state_dict()
        vector = None if probe is None else probe.pop("vector")
        state = {
            "epoch": epoch,
            "config": resume_fingerprint(self.run.resolved),
            "probe": probe,
            "scheduler": self.scheduler.state_dict()
            if isinstance(self.scheduler, EpochScheduler)
            else None,
        }
        checkpoint.save(
            self.engine,
            self.ckpt_dir,
            epoch,
            state,
            keep=self.tc.keep_checkpoints,
            tensors={} if vector is None else {"probe_vector": vector},
        )


def _epoch_line(row: dict[str, Any], last: int) -> str:
    parts = [f"epoch {row['epoch']}/{last}", f"loss {row['train_loss']:.4f}", f"lr {row['lr']:.4g}"]
    if row.get("val_accuracy") is not None:
        parts.append(f"val_acc {row['val_accuracy']:.4f}")
    if row.get("phase"):
        parts.append(row["phase"])
    if row.get("decision") not in (None, "none"):
        parts.append(row["decision"])
    if row.get("hmax") is not None:
        parts.append(f"hmax {row['hmax']:.4g}")
    parts.append(f"{row['epoch_seconds']:.2f}s")
    return "  ".join(parts)
