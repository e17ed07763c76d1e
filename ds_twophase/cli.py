"""The ``ds-twophase`` command: ``check-config`` (and ``train``, see ds_twophase.train; ``plot``,
``report``, ``margins``, see ds_twophase.analysis.commands)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .args import ArgumentParser, add_override_flag, report
from .errors import ConfigError, did_you_mean

__all__ = [
    "ArgumentParser",
    "COMMANDS",
    "add_override_flag",
    "check_config",
    "console",
    "main",
    "report",
]


def check_config(argv: Sequence[str]) -> int:
    """``ds-twophase check-config FILE [--set KEY=VALUE ...] [--world-size N]``."""
    parser = ArgumentParser(
        prog="ds-twophase check-config",
        description="Validate a run config without training; exit status 2 on any error.",
    )
    parser.add_argument("config", help="path of the JSON run config")
    add_override_flag(parser)
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of data-parallel ranks to check the batch arithmetic for",
    )
    from .config import load_config, validate_config

    try:
        args = parser.parse_args(argv)
        if args.world_size is not None and args.world_size < 1:
            raise ConfigError(f"--world-size: must be a positive integer, got {args.world_size}")
        run = validate_config(load_config(args.config, args.overrides), world_size=args.world_size)
    except ConfigError as exc:
        return report(exc)
    parts = [f"ok: {args.config}"]
    if run.optimizer is not None:
        parts.append(f"optimizer {run.optimizer.type}")
    if run.scheduler is not None:
        parts.append(f"scheduler {run.scheduler.type}")
    print(", ".join(parts))
    return 0


def train(argv: Sequence[str]) -> int:
    """``ds-twophase train [--config FILE] [--set KEY=VALUE ...] [--resume auto|PATH]``."""
    from .train import main as train_main

    return train_main(argv)


def analysis(name: str):
    """A command from ds_twophase.analysis.commands, imported only when it runs."""

    def command(argv: Sequence[str]) -> int:
        from .analysis import commands

        return getattr(commands, f"{name}_main")(argv)

    return command


COMMANDS = {
    "check-config": check_config,
    "train": train,
    "plot": analysis("plot"),
    "report": analysis("report"),
    "margins": analysis("margins"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ds-twophase`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = COMMANDS
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        names = ", ".join(commands)
        if argv and argv[0] not in ("-h", "--help"):
            hint = did_you_mean(argv[0], commands)
            print(f"error: unknown command '{argv[0]}'{hint}; commands: {names}", file=sys.stderr)
            return 2
        print(f"usage: ds-twophase {{{names}}} ...", file=sys.stderr)
        return 0 if argv else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())


def console() -> None:
    """The ``ds-twophase`` console script: :func:`main`, then the process ends with its status
    through :func:`ds_twophase.dist.exit_process` (never an abort at interpreter exit)."""
    from . import dist

    dist.exit_process(main())
