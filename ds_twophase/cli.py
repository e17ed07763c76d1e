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
    "SUMMARIES",
    "add_override_flag",
    "check_config",
    "console",
    "main",
    "report",
    "usage",
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

SUMMARIES = {
    "check-config": "validate a run config without training (exit status 2 on any error)",
    "train": "train from one JSON config (no --config: the embedded MNIST-1D run)",
    "plot": "plot a run's LR, loss, accuracy and hmax against epoch",
    "report": "tabulate runs grouped by config: mean ± std over seeds",
    "margins": "normalised output margins of the training samples (paper Appendix A.1)",
}
"""One line per command for ``ds-twophase --help``; each command's own ``--help`` says more."""


def usage() -> str:
    """The text of ``ds-twophase --help``: every command with its one-line summary."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: ds-twophase {{{','.join(COMMANDS)}}} ...",
        "",
        "Two-phase Hessian-aware learning rate and LARS for DeepSpeed.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS),
        "",
        "ds-twophase COMMAND --help describes a command's options.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ds-twophase`` console script. ``--help`` prints :func:`usage` and
    exits 0; no arguments print it on stderr and exit 2 (training needs ``train``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        hint = did_you_mean(argv[0], COMMANDS)
        names = ", ".join(COMMANDS)
        print(f"error: unknown command '{argv[0]}'{hint}; commands: {names}", file=sys.stderr)
        return 2
    from .accelerator import select_cpu_accelerator

    select_cpu_accelerator()  # before any command imports DeepSpeed
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())


def console() -> None:
    """The ``ds-twophase`` console script: :func:`main`, then the process ends with its status
    through :func:`ds_twophase.dist.exit_process` (never an abort at interpreter exit)."""
    from . import dist

    dist.exit_process(main())
