"""``python -m ds_twophase.train`` / ``deepspeed --module ds_twophase.train``: one JSON drives a run.

Given no ``--config`` it runs the embedded default: MNIST-1D, two-phase schedule + LARS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from . import dist
from .args import ArgumentParser, add_override_flag, report
from .errors import ConfigError

DEFAULT_CONFIG = "mnist1d.json"


def default_config_path() -> str:
    """Path of the embedded default config (MNIST-1D, two-phase + LARS)."""
    return str(resources.files("ds_twophase") / "defaults" / DEFAULT_CONFIG)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The trainer's command line; a bad flag raises :class:`ConfigError` naming it."""
    parser = ArgumentParser(
        prog="ds-twophase train",
        description="Train from one JSON config (DeepSpeed config + ds_twophase sections).",
    )
    parser.add_argument("--config", help="JSON run config (default: the embedded MNIST-1D run)")
    add_override_flag(parser)
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from the newest complete checkpoint in the output directory "
        "(auto) or from a checkpoint directory",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCH",
        help="save a checkpoint and exit after this epoch (e.g. to fit a job time "
        "limit); continue later with --resume auto",
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The flags' own checks, before any config is read; raises :class:`ConfigError`."""
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(
            f"--stop-after: must be an epoch >= 1, got {args.stop_after}; omit it to train "
            "to trainer.epochs"
        )
    if args.resume is None or args.resume == "auto":
        return
    fix = (
        "give a checkpoint directory (<trainer.output_dir>/checkpoints/epochNNNN) or 'auto' "
        "for the newest one in trainer.output_dir"
    )
    path = Path(args.resume)
    if not args.resume.strip():
        raise ConfigError(f"--resume: empty path; {fix}")
    if not path.exists():
        raise ConfigError(f"--resume: '{args.resume}' does not exist; {fix}")
    if not path.is_dir():
        raise ConfigError(f"--resume: '{args.resume}' is not a directory; {fix}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; exit status 0 on success, 2 for invalid input, 1 for a stopped run
    (a non-finite loss, a failed write, a collective that failed), 75
    (``preempt.EXIT_RESUMABLE``) for a run stopped by SIGTERM/SIGUSR1 after saving a
    checkpoint (continue it with ``--resume auto``).

    The process group is ended before returning (:func:`ds_twophase.dist.shutdown`). A
    collective that failed (another rank stopped answering for
    ``trainer.collective_timeout_minutes``, or died) is one line naming where; the newest
    complete checkpoint resumes with ``--resume auto``.
    """
    try:
        code = _run(argv)
    except dist.CollectiveFailure as exc:
        print(f"error: {exc}; resume with --resume auto", file=sys.stderr, flush=True)
        return 1
    dist.shutdown()
    return code


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        check_args(args)
    except ConfigError as exc:
        return _refuse(exc)
    dist.set_threads()
    from .accelerator import select_cpu_accelerator

    select_cpu_accelerator()  # before validation imports DeepSpeed
    from .config import load_config, validate_config
    from .config.trainer import prepare_output_dir

    try:
        raw = load_config(args.config or default_config_path(), args.overrides)
        # The one validation pass, before the process group starts (with the launcher's world
        # size, the batch arithmetic too).
        run = validate_config(raw, world_size=dist.launch_world_size())
        if run.trainer is None:
            raise ConfigError(
                key="trainer",
                problem="the config has no trainer section; add one (dataset, model, epochs), "
                "or drive your own loop with ds_twophase.initialize",
            )
        prepare_output_dir(run.trainer.output_dir)
        dist.init_process_group(
            quiet=True,  # no per-step INFO noise from any rank
            timeout_minutes=run.trainer.collective_timeout_minutes,
        )
        run.check_world_size(dist.get_world_size())  # a no-op when the launcher said it
        from .trainer import EXIT_RESUMABLE, Preempted, Trainer, TrainingStopped, WriteFailed

        try:
            with dist.collective_place("start-up, resume or the end of the run"):
                Trainer(run).fit(resume=args.resume, stop_after=args.stop_after)
        except (TrainingStopped, WriteFailed) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Preempted as exc:
            dist.print_rank_zero(f"preempted: {exc}")
            return EXIT_RESUMABLE
    except ConfigError as exc:
        return _refuse(exc)
    return 0


def _refuse(exc: ConfigError) -> int:
    """Every rank finds the same bad input: rank 0 prints it, and no rank exits before rank 0
    has (the launcher ends the job at the first non-zero exit). The exit status, 2."""
    status = report(exc) if dist.is_main_process() else 2
    dist.settle()
    return status


if __name__ == "__main__":
    dist.exit_process(main())
