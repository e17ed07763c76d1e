"""The trainer: builds data, model, sampler, engine and probe from a validated config, then fits.

The pieces live next door in this package: :mod:`.epoch` trains one epoch, :mod:`.evaluate`
measures the validation split, :mod:`.resume` picks and checks the checkpoint to continue from,
:mod:`.checkpoint` writes them, and :mod:`.decide` runs the epoch-end decision
(:func:`ds_twophase.schedulers.end_of_epoch.epoch_end`) into the row's columns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from .. import dist, epoch_row
from ..config import RunConfig
from ..config.trainer import TrainerConfig
from ..data import build_datasets
from ..engine import initialize_run, load_checkpoint
from ..errors import ConfigError
from ..models import build_model
from ..probe import HessianProbe
from ..schedulers import EpochScheduler
from . import checkpoint, preempt, summary
from .decide import decide
from .epoch import (
    EpochInterrupted,
    EpochProgress,
    ResumableSampler,
    TrainingStopped,
    cross_entropy,
    make_loader,
    seed_everything,
    stop_if_nonfinite,
    train_epoch,
)
from .epoch_analysis import EpochAnalysis
from .evaluate import evaluate
from .metrics import MetricsLog
from .metrics_sink import metrics_sink
from .monitor_events import check_backends
from .resume import check_fresh_output_dir, choose_checkpoint, resume_fingerprint

__all__ = ["RunResult", "Trainer", "TrainingStopped"]


@dataclass
class RunResult:
    """What a finished run reports."""

    epochs: int
    """Epochs completed (including those before a resume)."""
    val_accuracy: float | None
    """Validation accuracy after the last epoch."""
    output_dir: Path
    """Where the run's files are."""
    test_accuracy: float | None = None
    """Test accuracy after the last epoch (the validation accuracy when ``val_size`` is 0)."""


class Trainer:
    """Runs one validated config end to end on every rank: ``Trainer(run).fit(resume=...)``.

    Public surface (what the benches use): :meth:`fit`, :meth:`resume`, :meth:`train_epoch`; the
    read-only ``config``, ``engine``, ``probe``, ``splits`` and ``checkpoint_parts``; and the
    pieces built from the config: ``model``, ``sampler``, ``loader`` (a test may swap it for an
    instrumented one), ``metrics`` (``metrics.jsonl``), ``train_batch``, ``micro`` (the
    per-rank micro-batch) and ``steps_per_epoch``. Everything else is internal.
    """

    def __init__(self, run: RunConfig):
        if run.trainer is None:
            raise ConfigError(
                "trainer: the config has no trainer section; add one (dataset, model, epochs)"
            )
        self._run = run
        self._tc = run.trainer
        self._out = Path(self._tc.output_dir)
        self._ckpt_dir = self._out / "checkpoints"
        world = dist.get_world_size()
        batch = run.check_world_size(world)
        self.train_batch, self.micro, self._gas = batch.train, batch.micro, batch.gas
        seed_everything(self._tc.seed)
        self._splits = self._build_data()
        self.model = build_model(self._tc.model, self._splits.num_classes, self._splits.input_shape)
        if run.deepspeed.get("bf16", {}).get("enabled"):
            # DeepSpeed casts parameters but not buffers; BatchNorm on CPU needs both in bf16.
            self.model.to(torch.bfloat16)
        self._batch = batch
        self.sampler = ResumableSampler(
            self._splits.train,
            num_replicas=world,
            rank=dist.get_rank(),
            shuffle=True,
            seed=self._tc.seed,
            drop_last=True,
        )
        # The sampler drops the remainder over ranks and the loader the last partial micro-batch.
        self.steps_per_epoch = batch.require_steps(
            len(self._splits.train), pad=False, drop_last=True, key="trainer.dataset.train_size"
        )
        self.loader = make_loader(
            self._splits.train, self.sampler, self.micro, self._tc.num_workers
        )
        check_backends(run.deepspeed)  # a monitor package missing: one line, not a traceback
        self._engine, _, _, self._scheduler = initialize_run(
            run,
            model=self.model,
            total_epochs=self._tc.epochs,
            steps_per_epoch=self.steps_per_epoch,
        )
        self._probe = None
        if run.schedule_probe is not None:
            self._probe = HessianProbe(
                self._splits.train,
                cross_entropy,
                run.schedule_probe,
                batch_size=self.train_batch,
                micro_batch_size=self.micro,
                seed=self._tc.seed,
                zero_stage=run.zero_stage,
            )
        self.metrics = MetricsLog(self._out / "metrics.jsonl")
        # Rank 0 writes metrics.jsonl, config.json and DeepSpeed's monitor; other ranks nothing.
        self._sink = metrics_sink(self.metrics, self._engine, self._ckpt_dir)
        # probe.every and trainer.margins_every.
        self._analysis = EpochAnalysis(
            run, self._splits.train, batch_size=self.train_batch, micro_batch_size=self.micro
        )
        # Pre-emption: the stop flag while fit runs, and the mid-epoch progress to resume from.
        self._stop: preempt.StopFlag | None = None  # set while fit runs
        self._mid_epoch = preempt.MidEpoch()
        # What a checkpoint holds beside DeepSpeed's files, one stateful part per key, saved and
        # restored as one: a new part joins this map, not the save or resume code.
        self._parts: dict[str, checkpoint.Stateful] = {"partial": self._mid_epoch}
        if isinstance(self._scheduler, EpochScheduler):  # DeepSpeed's own: only in its files
            self._parts["scheduler"] = self._scheduler
        if self._probe is not None:
            self._parts["probe"] = self._probe
        if self._analysis.probe is not None:
            self._parts["probe_every"] = self._analysis.probe

    @property
    def config(self) -> TrainerConfig:
        """The run's validated ``trainer`` section."""
        return self._tc

    @property
    def engine(self) -> Any:
        """The DeepSpeed engine (``engine.module``: the model being trained)."""
        return self._engine

    @property
    def probe(self) -> HessianProbe | None:
        """The schedule's Hessian probe (``None`` when the scheduler takes no decision)."""
        return self._probe

    @property
    def splits(self) -> Any:
        """The data: ``train``, ``val`` and ``test`` splits, ``num_classes``, ``input_shape``."""
        return self._splits

    @property
    def checkpoint_parts(self) -> dict[str, checkpoint.Stateful]:
        """The stateful parts a checkpoint holds beside DeepSpeed's files, by name."""
        return dict(self._parts)

    def _build_data(self) -> Any:
        # Rank 0 generates and caches the data set first so the other ranks only read it.
        if dist.is_rank_zero():
            splits = build_datasets(self._tc.dataset)
        dist.barrier()
        if not dist.is_rank_zero():
            splits = build_datasets(self._tc.dataset)
        return splits

    def resume(self, target: str) -> int:
        """Load a checkpoint (``auto``: newest complete one in the run's directory); returns the
        epoch it holds, or 0 when ``auto`` finds none. Rank 0 chooses and every rank follows, so
        ranks never disagree about where they resume."""
        choice = dist.on_rank_zero(
            lambda: choose_checkpoint(
                target,
                self._ckpt_dir,
                self.metrics,
                self._run.resolved,
                log=dist.print_rank_zero,
                warn=dist.warn_rank_zero,
            )
        )
        epoch = 0
        if choice is not None:
            epoch, path, state = choice
            note = preempt.world_size_note(
                state, path, zero_stage=self._run.zero_stage, batch=self._batch
            )
            path = Path(path)
            load_checkpoint(self._engine, path.parent, tag=path.name)
            checkpoint.load_parts(self._parts, state)
            progress = self._mid_epoch.progress
            if progress is not None:  # a mid-epoch checkpoint
                note += f"{progress.micro_batches} micro-batch(es) into epoch {epoch + 1}; "
            dist.print_rank_zero(f"resume: {note}continuing after epoch {epoch} from {path}")
        self._sink.resumed(epoch)  # epochs no checkpoint kept are trained again
        return epoch

    def train_epoch(
        self, epoch: int, *, stop: preempt.StopFlag | None = None
    ) -> tuple[float, float, int]:
        """One epoch of exactly ``steps_per_epoch`` optimizer steps: the mean training loss over
        all ranks and micro-batches, its standard error, and the number of micro-batches skipped
        for a non-finite loss (with ``on_nonfinite_loss = "skip"``) on all ranks. With ``stop``,
        the ranks agree after every optimizer step whether any got a stop signal and end the
        epoch early together (:class:`~ds_twophase.trainer.epoch.EpochInterrupted`)."""
        self.sampler.set_epoch(epoch)
        start = self._mid_epoch.take()  # a mid-epoch checkpoint's epoch only
        if start is not None:
            self.sampler.skip = start.micro_batches * self.micro
        return train_epoch(
            self._engine,
            self.loader,
            epoch,
            micro_batches=self.steps_per_epoch * self._gas,
            seed=self._tc.seed,
            skip_nonfinite=self._tc.on_nonfinite_loss == "skip",
            progress=self._tc.progress,
            start=start,
            gas=self._gas,
            should_stop=None if stop is None else stop.agreed,
        )

    def fit(self, resume: str | None = None, stop_after: int | None = None) -> RunResult:
        """Train to ``trainer.epochs`` (or save and return after epoch ``stop_after``)."""
        if resume:
            start = self.resume(resume)
        else:
            dist.on_rank_zero(
                lambda: check_fresh_output_dir(self._out, self.metrics, self._ckpt_dir)
            )
            start = 0
        # The code this session trains with, for summary.json (read now: the tree may change
        # while a long run trains).
        self._commit = summary.commit_info(Path.cwd(), Path(__file__).parent)
        # Only once the checks passed: a refused run must not overwrite the existing run's file.
        self._sink.start(start, self._run.resolved)
        last = self._tc.epochs
        end_at = last if stop_after is None else min(stop_after, last)
        val_acc = None
        with preempt.StopFlag() as self._stop:
            timer = preempt.CheckpointTimer(self._tc.checkpoint_minutes)
            for epoch in range(start + 1, end_at + 1):
                try:
                    row = self._epoch(epoch, last)
                except EpochInterrupted as exc:
                    self._preempted(epoch - 1, exc.progress)
                val_acc = row["val_accuracy"] if row["val_accuracy"] is not None else val_acc
                every = self._tc.checkpoint_every
                if epoch == end_at or (every and epoch % every == 0) or timer.due():
                    self._save(epoch)
                    timer.saved()
                if epoch < end_at and self._stop.agreed():
                    self._preempted(epoch, None)
        self._stop = None
        if end_at < last:
            dist.print_rank_zero(
                f"stopped after epoch {end_at} of {last}; continue with --resume auto ({self._out})"
            )
        test_acc = None
        if end_at >= last:
            if val_acc is None:  # resumed after the last epoch: nothing was trained here
                val_acc = evaluate(self._engine, self._splits.val, 4 * self.micro)[1]
            test_acc = dist.on_rank_zero(self._write_summary)["test_accuracy"]
            dist.print_rank_zero(
                f"done: {last} epochs, final test accuracy {test_acc:.4f} ({self._out})"
            )
        return RunResult(
            epochs=max(end_at, start),
            val_accuracy=val_acc,
            output_dir=self._out,
            test_accuracy=test_acc,
        )

    def _write_summary(self) -> dict[str, Any]:
        """Write ``summary.json`` from ``metrics.jsonl`` (rank 0) and return it."""
        commit, dirty = self._commit
        data = summary.build_summary(
            self.metrics.read(),
            self._run.resolved,
            resume_fingerprint(self._run.resolved),
            commit=commit,
            commit_dirty=dirty,
            val_indices=self._splits.val_indices,
        )
        path = self._out / summary.SUMMARY_NAME
        with checkpoint.stop_on_write_error(str(path), self._ckpt_dir):
            checkpoint.write_json_atomic(path, data)
        return data

    def _epoch(self, epoch: int, last: int) -> dict[str, Any]:
        """Train, decide, evaluate and log one epoch; its metrics row."""
        t0 = time.perf_counter()
        with dist.collective_place(lambda: self._step_place(epoch)):
            train_loss, train_loss_se, skipped = self.train_epoch(epoch, stop=self._stop)
        stop_if_nonfinite(epoch, train_loss, self._ckpt_dir)
        se = train_loss_se if math.isfinite(train_loss_se) else None
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_loss_se": se}
        if self._tc.on_nonfinite_loss == "skip":
            row["skipped_micro_batches"] = skipped
            if skipped:
                dist.warn_rank_zero(
                    f"epoch {epoch}: skipped {skipped} micro-batch(es) with a non-finite loss"
                )
        with dist.collective_place(f"the end of epoch {epoch} (probe, decision, evaluation)"):
            decision, probe_seconds, probed = decide(self._engine, self._probe, train_loss, se)
            row.update(decision)
            probe_seconds += self._analysis.measure(
                self._engine, epoch, last, row, scheduled=probed
            )
            row["lr"] = self._engine.get_lr()[0]
            row["val_loss"] = row["val_accuracy"] = None
            if epoch % self._tc.eval_every == 0 or epoch == last:
                row["val_loss"], row["val_accuracy"] = evaluate(
                    self._engine, self._splits.val, 4 * self.micro
                )
            if epoch == last and self._splits.test is not None:
                # The test split is touched once, after the last epoch (val_size > 0).
                row["test_loss"], row["test_accuracy"] = evaluate(
                    self._engine, self._splits.test, 4 * self.micro
                )
        row["probe_seconds"] = probe_seconds
        row["epoch_seconds"] = time.perf_counter() - t0
        epoch_row.check_row(row)  # every column is declared in the one schema
        self._sink.write(row)
        dist.print_rank_zero(_epoch_line(row, last))
        return row

    def _preempted(self, epoch: int, progress: EpochProgress | None) -> NoReturn:
        """Save a complete checkpoint after ``epoch`` (and ``progress`` into the next) and
        raise :class:`~ds_twophase.trainer.preempt.Preempted`."""
        assert self._stop is not None  # only called inside fit's loop
        path = self._save(epoch, progress)
        where = f"after epoch {epoch}"
        if progress is not None:
            where = f"after {progress.micro_batches} micro-batch(es) of epoch {epoch + 1}"
        raise preempt.Preempted(
            f"stopped by {self._stop.name()} {where}; saved {path}; continue with --resume auto "
            f"(exit status {preempt.EXIT_RESUMABLE})"
        )

    def _step_place(self, epoch: int) -> str:
        """Where a collective failed inside epoch ``epoch``: the optimizer step it was in."""
        done = self._engine.global_steps - (epoch - 1) * self.steps_per_epoch
        step = min(max(done + 1, 1), self.steps_per_epoch)
        return f"epoch {epoch}, optimizer step {step} of {self.steps_per_epoch}"

    def _save(self, epoch: int, progress: EpochProgress | None = None) -> Path:
        with dist.collective_place(f"saving the checkpoint of epoch {epoch}"):
            return self._save_checkpoint(epoch, progress)

    def _save_checkpoint(self, epoch: int, progress: EpochProgress | None) -> Path:
        self._mid_epoch.progress = progress
        try:
            return checkpoint.save(
                self._engine,
                self._ckpt_dir,
                epoch,
                self._parts,
                keep=self._tc.keep_checkpoints,
                meta={
                    "config": resume_fingerprint(self._run.resolved),
                    "world_size": dist.get_world_size(),
                },
                micro_batches=None if progress is None else progress.micro_batches,
            )
        finally:
            self._mid_epoch.progress = None


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
