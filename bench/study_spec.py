"""A study spec: which testbed a tuning study runs on, validated once into :class:`StudySpec`.

One JSON file per testbed (``bench/studies/<name>.json``) names the configs folder, the rows
(one config each, optionally with fixed ``--set`` overrides, so rows may share a config), each
row's tuning grid, the tuning and final seeds, extra study axes, and which rows are the small
batch, the large batch and the reference for paired differences. ``bench/accuracy.py --spec``
runs it; adding a testbed is writing one such file. Example::

    {"title": "MNIST-1D, 60 epochs", "configs": "configs/mnist1d",
     "tuning_seeds": [0, 100], "final_seeds": [1, 2, 3, 4, 5, 6, 7, 8],
     "small": "small_batch", "large": "large_batch_step", "reference": "lars_step",
     "rows": [{"name": "lars_step", "grid": {"optimizer.params.lr": [0.8, 1.6, 3.2],
                                             "optimizer.params.trust_coefficient": [0.001, 0.01]}},
              {"name": "tpl_significant", "config": "two_phase_lars.json",
               "sets": ["scheduler.params.rise=significant"],
               "grid": {"optimizer.params.lr": [0.8, 1.6], "scheduler.params.rise_z": [1, 2]}}]}

Grid points run in grid order: the first axis varies fastest (every lr at the first trust
coefficient, then every lr at the next). The overrides are not checked against the config
schema here: the trainer validates each run's config when it starts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT

from ds_twophase.config import load_config
from ds_twophase.errors import ConfigError, check_number, did_you_mean, is_int, is_number

TUNING_SEEDS = 2
"""Tuning seeds a spec must name: one seed cannot resolve the top grid points (issue 20)."""
MIN_FINAL_SEEDS = 8
"""Fewest final seeds a spec may name."""
EXTEND = ("optimizer.params.lr",)
"""Axes extended by default when a row's best point sits on their edge."""
MAX_EXTENSIONS = 2
"""Default number of steps an axis may be extended beyond each of its ends."""
SHORT = {"optimizer.params.lr": "lr", "optimizer.params.trust_coefficient": "eta"}
"""Run directory names for axes (others: the key's last part, e.g. ``rise_z``)."""

Value = int | float | str | bool


@dataclass(frozen=True)
class Row:
    """One row of the study's table."""

    name: str
    """Row name: its run directories (``final/<name>/s<seed>``) and its table entry."""
    label: str
    """Human name in the report, e.g. ``two-phase + LARS``."""
    config: Path
    """The row's config file (absolute)."""
    sets: tuple[str, ...]
    """Fixed ``--set`` overrides of every run of the row (rows sharing a config differ here)."""
    grid: dict[str, list[Value]]
    """Tuning axes: dotted config key -> values, first axis fastest in grid order."""


@dataclass(frozen=True)
class Study:
    """An extra axis run at a row's chosen point on the final seeds."""

    name: str
    """Directory and table name (``studies/<name>/<value>/s<seed>``)."""
    row: str
    """The row whose chosen point the study varies."""
    key: str
    """Dotted config key varied."""
    values: list[Value]
    """Its values."""


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec (see the module docstring)."""

    path: Path
    """The spec file."""
    title: str
    """The testbed's section heading in ``docs/results.md``."""
    about: str
    """The testbed and protocol in words, printed under the heading."""
    rows: list[Row]
    """Rows in table order."""
    tuning_seeds: list[int]
    """Seeds every grid point trains with; the choice is on their mean final validation
    accuracy (ties: the first point in grid order)."""
    final_seeds: list[int]
    """Fresh seeds the chosen points train with; only these report test accuracy."""
    small: str | None
    """The small-batch row (the "gap closed" target); ``None`` (a spec that compares rules
    without the batch rows): no gap closed."""
    large: str | None
    """The large-batch row (the "gap closed" origin); ``None`` with ``small``."""
    reference: str
    """The row every other row is paired against, seed by seed."""
    ordering: list[str] = field(default_factory=list)
    """Rows in the order the paper claims (best first); the report says whether the means hold it."""
    studies: list[Study] = field(default_factory=list)
    """Extra axes at a row's chosen point."""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """Further ``(row, against)`` paired differences beyond each row against ``reference``
    (e.g. a new decay rule against the paper's on the same seeds)."""
    extend: tuple[str, ...] = EXTEND
    """Axes extended one step (geometric if positive) when the best point sits on their edge."""
    max_extensions: int = MAX_EXTENSIONS
    """Extension steps allowed beyond each end of an axis; past them the final runs of the row
    are refused with a message naming the values to add."""
    seed_waiver: str | None = None
    """Why this spec names fewer seeds than the protocol asks (a study recorded before it)."""

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        return next(r for r in self.rows if r.name == name)


KEYS = {
    "title",
    "about",
    "configs",
    "rows",
    "tuning_seeds",
    "final_seeds",
    "small",
    "large",
    "reference",
    "ordering",
    "studies",
    "pairs",
    "extend",
    "max_extensions",
    "seed_waiver",
}
ROW_KEYS = {"name", "label", "config", "sets", "grid"}
STUDY_KEYS = {"name", "row", "key", "values"}


def _keys(data: Any, allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(key=where or "spec", problem="must be a JSON object")
    for key in data:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise ConfigError(
                key=f"{where}{key}", problem=f"unknown key{hint}; known: {sorted(allowed)}"
            )


def _text(data: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(key=f"{where}{key}", problem=f"must be a non-empty string, got {value!r}")
    return value


def _values(value: Any, where: str) -> list[Value]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            key=where, problem=f"no points; give a list of at least one value, got {value!r}"
        )
    for v in value:
        if not isinstance(v, (int, float, str, bool)) or "/" in str(v):
            raise ConfigError(
                key=where, problem=f"values must be numbers or strings without '/', got {v!r}"
            )
    if len({json.dumps(v) for v in value}) < len(value):
        raise ConfigError(key=where, problem=f"repeats a value: {value}")
    return list(value)


def _seeds(data: dict[str, Any], key: str) -> list[int]:
    seeds = data.get(key)
    if not isinstance(seeds, list) or not all(is_int(s) and s >= 0 for s in seeds):
        raise ConfigError(
            key=key, problem=f"must be a list of seeds (integers >= 0), got {seeds!r}"
        )
    if len(set(seeds)) < len(seeds):
        raise ConfigError(key=key, problem=f"repeats a seed: {seeds}")
    return list(seeds)


def _row(data: Any, i: int, configs: Path) -> Row:
    where = f"rows[{i}]."
    _keys(data, ROW_KEYS, where)
    name = _text(data, "name", where)
    where = f"rows.{name}."
    if "/" in name or name.startswith("."):
        raise ConfigError(key=f"{where}name", problem="must be a plain directory name")
    config = configs / _text(data, "config", where, default=f"{name}.json")
    if not config.is_file():
        raise ConfigError(
            key=f"{where}config",
            problem=f"{config} does not exist; name a file in the spec's configs folder",
        )
    sets = data.get("sets", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise ConfigError(
            key=f"{where}sets", problem=f"must be a list of 'key=value' overrides, got {sets!r}"
        )
    resolved = load_config(config, list(sets))
    if not (resolved.get("trainer", {}).get("dataset", {}).get("val_size") or 0):
        # without a held-out split the trainer validates on the test split: tuning on test
        raise ConfigError(
            key=f"{where}config",
            problem=f"{config.name} holds out no validation split; set trainer.dataset.val_size "
            "in the config or the row's sets (the grid must not be judged on the test split)",
        )
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(
            key=f"{where}grid",
            problem='no points; give at least one axis, e.g. {"optimizer.params.lr": [0.1, 0.2]}',
        )
    axes = {key: _values(values, f"{where}grid.{key}") for key, values in grid.items()}
    label = _text(data, "label", where, default=name)
    return Row(name, label, config, tuple(sets), axes)


def _row_name(data: dict[str, Any], key: str, names: list[str]) -> str:
    value = data.get(key)
    if value not in names:
        raise ConfigError(
            key=key,
            problem=f"unknown row {value!r}{did_you_mean(str(value), names)}; rows: {names}",
        )
    return str(value)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file; a problem raises one :class:`ConfigError` line."""
    path = Path(path).resolve()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(key="--spec", problem=f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(key="--spec", problem=f"{path} is not JSON: {exc}") from None
    _keys(data, KEYS, "")
    configs = ROOT / _text(data, "configs", "")
    if not configs.is_dir():
        raise ConfigError(
            key="configs", problem=f"{configs} is not a folder; give one relative to the repository"
        )
    raw_rows = data.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise ConfigError(key="rows", problem="must be a non-empty list of rows")
    rows = [_row(r, i, configs) for i, r in enumerate(raw_rows)]
    names = [r.name for r in rows]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(key="rows", problem=f"row names repeat: {dup}")
    tuning, final = _seeds(data, "tuning_seeds"), _seeds(data, "final_seeds")
    waiver = data.get("seed_waiver")
    if waiver is not None and (not isinstance(waiver, str) or not waiver):
        raise ConfigError(key="seed_waiver", problem="must say why the spec names fewer seeds")
    if waiver is None and len(tuning) != TUNING_SEEDS:
        raise ConfigError(
            key="tuning_seeds", problem=f"must name {TUNING_SEEDS} seeds, got {len(tuning)}"
        )
    if waiver is None and len(final) < MIN_FINAL_SEEDS:
        raise ConfigError(
            key="final_seeds",
            problem=f"must name at least {MIN_FINAL_SEEDS} seeds, got {len(final)}",
        )
    if not tuning or not final:
        raise ConfigError(
            key="tuning_seeds" if not tuning else "final_seeds", problem="names no seed"
        )
    if shared := sorted(set(tuning) & set(final)):
        raise ConfigError(key="final_seeds", problem=f"must be fresh: {shared} also tune")
    ordering = data.get("ordering", [])
    if not isinstance(ordering, list):
        raise ConfigError(key="ordering", problem="must be a list of row names")
    for i in range(len(ordering)):
        _row_name({f"ordering[{i}]": ordering[i]}, f"ordering[{i}]", names)
    studies = []
    for i, raw in enumerate(data.get("studies", [])):
        _keys(raw, STUDY_KEYS, f"studies[{i}].")
        studies.append(
            Study(
                _text(raw, "name", f"studies[{i}]."),
                _row_name(raw, "row", names),
                _text(raw, "key", f"studies[{i}]."),
                _values(raw.get("values"), f"studies[{i}].values"),
            )
        )
    extend = data.get("extend", list(EXTEND))
    if not isinstance(extend, list) or not all(isinstance(k, str) for k in extend):
        raise ConfigError(key="extend", problem=f"must be a list of grid keys, got {extend!r}")
    for row in rows:
        for key in extend:
            if key in row.grid and len(row.grid[key]) > 1 and not _monotone(row.grid[key]):
                raise ConfigError(
                    key=f"rows.{row.name}.grid.{key}",
                    problem="an extended axis must be numbers in increasing or decreasing order",
                )
    pairs = data.get("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(
            key="pairs", problem=f"must be a list of [row, against] pairs, got {pairs!r}"
        )
    for i, (a, b) in enumerate(pairs):
        _row_name({f"pairs[{i}]": a}, f"pairs[{i}]", names)
        _row_name({f"pairs[{i}]": b}, f"pairs[{i}]", names)
    max_ext = data.get("max_extensions", MAX_EXTENSIONS)
    check_number("max_extensions", max_ext, low=0, integer=True)
    if ("small" in data) != ("large" in data):
        raise ConfigError(
            key="small" if "small" not in data else "large",
            problem="name both the small- and the large-batch row, or neither (no gap closed)",
        )
    small = _row_name(data, "small", names) if "small" in data else None
    large = _row_name(data, "large", names) if "large" in data else None
    return StudySpec(
        path=path,
        title=_text(data, "title", ""),
        about=_text(data, "about", "", default=" ").strip(),
        rows=rows,
        tuning_seeds=tuning,
        final_seeds=final,
        small=small,
        large=large,
        reference=_row_name(data, "reference", names),
        ordering=[str(o) for o in ordering],
        studies=studies,
        pairs=[(str(a), str(b)) for a, b in pairs],
        extend=tuple(extend),
        max_extensions=int(max_ext),
        seed_waiver=waiver,
    )


def _monotone(values: list[Value]) -> bool:
    if not all(is_number(v) for v in values):
        return False
    steps = [float(b) - float(a) for a, b in itertools.pairwise(values)]  # type: ignore[arg-type]
    return all(s > 0 for s in steps) or all(s < 0 for s in steps)


# -- grid points -------------------------------------------------------------------------------


def grid_points(grid: dict[str, list[Value]]) -> list[dict[str, Value]]:
    """Every point of ``grid`` in grid order (the first axis varies fastest)."""
    keys = list(grid)
    combos = itertools.product(*(grid[k] for k in reversed(keys)))
    return [dict(zip(keys, reversed(combo), strict=True)) for combo in combos]


def point_name(point: dict[str, Value]) -> str:
    """The point's directory name, e.g. ``lr1.6_eta0.01``."""
    return "_".join(f"{SHORT.get(k, k.rsplit('.', 1)[-1])}{v}" for k, v in point.items())


def set_item(key: str, value: Value) -> str:
    """``key=value`` as ``--set`` reads it (strings bare, the rest as JSON)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def point_sets(row: Row, point: dict[str, Value]) -> list[str]:
    """The overrides that train ``row`` at ``point``: its fixed ones, then the point's."""
    return [*row.sets, *(set_item(k, v) for k, v in point.items())]
