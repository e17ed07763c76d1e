"""The ``ds-twophase`` command: ``check-config`` (and ``train``, see ds_twophase.train; ``plot``,
``report``, ``margins``, see ds_twophase.analysis.commands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ConfigError, did_you_mean


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are :class:`ConfigError` lines naming the flag.

    argparse would print its usage and exit (``SystemExit``) with a message that does not start
    with the flag; here a bad flag is reported like any other bad input (one ``error:`` line,
    exit status 2) by whoever catches the ``ConfigError``. ``--help`` still prints and exits.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        required = "the following arguments are required: "
        if message.startswith(required):
            message = f"{message[len(required) :]}: required"
        message = message.removeprefix("argument ")
        raise ConfigError(f"{message}; see {self.prog} --help")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # An unknown option's value is a stray argument too: report the option only.
            options = [extra for extra in extras if extra.startswith("-")]
            raise ConfigError([self._unknown(extra) for extra in options or extras[:1]])
        return parsed

    def _unknown(self, extra: str) -> str:
        flags = [
            flag
            for action in self._actions
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
            for flag in action.option_strings
            if flag.startswith("--")
        ]
        if extra.startswith("-"):
            name = extra.split("=", 1)[0]
            return f"{name}: unknown option{did_you_mean(name, flags)}; options: {', '.join(flags)}"
        return (
            f"'{extra}': unexpected argument; every input is a flag ({', '.join(flags)}), "
            f"see {self.prog} --help"
        )


def add_override_flag(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--set KEY=VALUE`` flag shared by every command that reads a config."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key by dotted path (JSON value), e.g. trainer.epochs=30",
    )


def report(exc: ConfigError) -> int:
    """Print each message of ``exc`` as one ``error:`` line on stderr; the exit status (2)."""
    for message in exc.messages:
        print(f"error: {message}", file=sys.stderr)
    return 2


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
