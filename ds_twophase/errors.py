"""Errors that reach users as one clear line, never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard


@dataclass(frozen=True)
class Problem:
    """One bad input: the config key (or flag) it is about and what is wrong with it."""

    key: str
    """Dotted config key (``trainer.epochs``), flag (``--resume``) or ``""`` when the problem
    text names its input itself."""
    problem: str
    """What is wrong and how to fix it, without the key."""

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" if self.key else self.problem

    def under(self, prefix: str) -> Problem:
        """This problem with ``prefix`` (e.g. ``"trainer."``) in front of its key; a keyless
        problem goes under the section itself (``"trainer"``)."""
        return Problem(prefix + self.key if self.key else prefix.rstrip("."), self.problem)


class ConfigError(ValueError):
    """Invalid user input (config file, ``--set`` override or command-line flag).

    Holds one or more :class:`Problem` items, each naming the offending key and the fix:
    ``ConfigError(key="trainer.epochs", problem="must be >= 1, got 0")``, or a list of problems
    (or of ready-made one-line messages). ``str()`` is one ``key: problem`` line per problem; the
    command line prints each on its own line and exits with status 2.
    """

    def __init__(
        self,
        problems: str | Problem | Iterable[str | Problem] = (),
        *,
        key: str | None = None,
        problem: str | None = None,
    ):
        if problem is not None:
            items: list[str | Problem] = [Problem(key or "", problem)]
        elif isinstance(problems, (str, Problem)):
            items = [problems]
        else:
            items = list(problems)
        # A plain string is a message that names its input itself (e.g. "--set 'x': ...").
        self.problems = [p if isinstance(p, Problem) else Problem("", p) for p in items]
        super().__init__("\n".join(self.messages))

    @property
    def messages(self) -> list[str]:
        """One ``key: problem`` line per problem."""
        return [str(p) for p in self.problems]

    @property
    def key(self) -> str:
        """The key of the first problem (``""`` when it has none)."""
        return self.problems[0].key if self.problems else ""

    def under(self, prefix: str) -> ConfigError:
        """The same problems with ``prefix`` in front of every key (a nested section's errors
        reported under the section's own path)."""
        return ConfigError([p.under(prefix) for p in self.problems])


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace runs collapsed), or its type's name when
    it has none: for error lines that must stay one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for the closest candidate, or ``""``."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_keys(keys: Iterable[str], allowed: Iterable[str], *, owner: str = "") -> list[Problem]:
    """The one key check: a :class:`Problem` keyed by each of ``keys`` not in ``allowed``,
    ``unknown key[ for <owner>] (did you mean 'x'?); allowed: ...`` (``none`` when nothing is)
    (put it under its section with :meth:`Problem.under`)."""
    allowed = list(allowed)
    whose = f" for {owner}" if owner else ""
    names = ", ".join(sorted(allowed)) or "none"
    return [
        Problem(key, f"unknown key{whose}{did_you_mean(key, allowed)}; allowed: {names}")
        for key in keys
        if key not in allowed
    ]


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number: ``int`` or ``float`` but not ``bool`` (``True`` is an ``int`` in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: ``int`` but not ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """The one number check: raise :class:`ConfigError` (a ``ValueError``) keyed ``name`` unless
    ``value`` is a finite number (an integer with ``integer``) in the range, or ``None`` with
    ``optional``. Integral floats pass as integers (JSON ``2.0``); ``bool`` never passes."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    orr = " or null" if optional else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key=name, problem=f"must be {kind}{orr}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(key=name, problem=f"must be finite, got {value!r}")
    if integer and not float(value).is_integer():
        raise ConfigError(key=name, problem=f"must be an integer{orr}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        sign = ">" if low_open else ">="
        raise ConfigError(key=name, problem=f"must be {kind} {sign} {low}{orr}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        sign = "<" if high_open else "<="
        raise ConfigError(key=name, problem=f"must be {kind} {sign} {high}{orr}, got {value!r}")
