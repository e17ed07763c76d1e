"""Errors that reach users as one clear line, never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """Invalid user input (config file, ``--set`` override or command-line flag).

    Holds one or more one-line messages, each naming the offending key and the fix. The command
    line prints each message on its own line and exits with status 2.
    """

    def __init__(self, messages: str | Iterable[str]):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for the closest candidate, or ``""``."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
