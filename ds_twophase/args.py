"""Command-line pieces shared by ``ds-twophase`` (cli.py) and ``python -m ds_twophase.train``.

Both commands import this module and neither imports the other at module level, so there is no
import cycle between them.
"""

from __future__ import annotations

import argparse
import sys

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
