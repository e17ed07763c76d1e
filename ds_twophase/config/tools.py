"""Turning JSON mappings into validated objects, with one-line errors that name the key."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Problem, did_you_mean, is_int, is_number, unknown_keys


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file; a missing file or a syntax error is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            key="config", problem=f"file '{p}' does not exist; check the path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            key="config", problem=f"cannot read '{p}': {exc.strerror}; give the path of a JSON file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            key="config",
            problem=f"'{p}' is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            key="config",
            problem=f"'{p}' is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            key="config", problem=f"'{p}' must hold a JSON object, got {type(data).__name__}"
        )
    return data


def call_checked(
    fn: Callable[..., Any], kwargs: dict[str, Any], prefix: str, *, skip: Iterable[str] = ()
) -> Any:
    """Call ``fn(**kwargs)`` after checking the keys against its signature.

    Unknown keys, missing required arguments and the ``ValueError``/``TypeError`` that ``fn``
    raises for a bad value become a :class:`ConfigError` keyed ``prefix + argument`` (``fn``
    raises a keyed ``ConfigError``; other errors go under the section, ``prefix`` itself). ``skip`` names parameters that are filled in by the caller.
    """
    params = {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    errors = [p.under(prefix) for p in unknown_keys(kwargs, params)]
    errors += [
        Problem(f"{prefix}{name}", "required key is missing")
        for name, p in params.items()
        if p.default is p.empty and name not in kwargs
    ]
    if errors:
        raise ConfigError(errors)
    try:
        return fn(**kwargs)
    except ConfigError as exc:  # keyed by argument name: report under the config's path
        raise exc.under(prefix) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(_under_section(prefix, exc)) from None
    except ArithmeticError as exc:  # e.g. int(float("inf")): name the non-finite value
        bad = next((k for k, v in kwargs.items() if _non_finite(v)), None)
        if bad is None:
            raise ConfigError(_under_section(prefix, exc)) from None
        raise ConfigError(
            key=f"{prefix}{bad}", problem=f"must be a finite number, got {kwargs[bad]!r}"
        ) from None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a JSON mapping, recursing into dataclass-typed fields.

    Unknown keys get a did-you-mean; field values are type-checked against the annotations
    (int, float, str, bool, lists, dicts, ``X | None``, Literal); the class's own
    ``__post_init__`` range checks (:class:`ConfigError` keyed by the field name) are reported
    under ``prefix``.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(
            key=prefix.rstrip("."), problem=f"must be a JSON object, got {_kind(data)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    errors = [p.under(prefix) for p in unknown_keys(data, fields)]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            continue
        try:
            kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
        except ConfigError as exc:
            errors += exc.problems
    errors += [
        Problem(f"{prefix}{name}", "required key is missing")
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if errors:
        raise ConfigError(errors)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # __post_init__ checks are keyed by field name
        raise exc.under(prefix) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(_under_section(prefix, exc)) from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                problems.append(exc)
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(key=key, problem=f"expected {expected}, got {_kind(value)} {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        hint_text = did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(key=key, problem=f"must be one of {choices}, got {value!r}{hint_text}")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(typing.cast(type, hint), value, key + ".")
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key=key, problem=f"expected a list, got {_kind(value)} {value!r}")
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or hint) is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                key=key, problem=f"expected a JSON object, got {_kind(value)} {value!r}"
            )
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key=key, problem=f"expected true or false, got {_kind(value)} {value!r}")
    if hint is int:
        if is_int(value):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key=key, problem=f"expected an integer, got {_kind(value)} {value!r}")
    if hint is float:
        if is_number(value):
            return float(value)
        raise ConfigError(key=key, problem=f"expected a number, got {_kind(value)} {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key=key, problem=f"expected a string, got {_kind(value)} {value!r}")
    return value


def _under_section(prefix: str, exc: Exception) -> Problem:
    """A third-party ``ValueError``/``TypeError`` (its text names no config key we can trust),
    reported under the section: ``scheduler.params: <first line>``."""
    text = str(exc).splitlines()[0] if str(exc) else "invalid value"
    return Problem(prefix.rstrip("."), text)


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        t, getattr(t, "__name__", str(t))
    )


def _kind(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
