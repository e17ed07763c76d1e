"""A row's tuning grid resolved from its runs: the choice on the tuning seeds' mean validation
accuracy, and the grid's extension when the best point sits on its edge.

The choice is the point with the highest mean final-epoch validation accuracy over the tuning
seeds; equal means go to the first point in grid order. When that point sits on the first or
last value of an axis the spec extends (``extend``, by default the learning rate), the axis
gets one more value beyond that end: a geometric step when the axis is positive with one
ratio (0.4, 0.8, 1.6 -> 3.2; two positive values count as geometric), else the arithmetic step
of its two end values (1, 2, 3 -> 4), and the new points are trained with the
same tuning seeds before any final run. After ``max_extensions`` steps beyond one end the row's
final runs are refused with a message naming the values to add to the spec. An axis with one
value is never extended (it has no step). Everything here is a function of the spec and the
run directories, so the report and the runner resolve the same grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from study_spec import Row, StudySpec, Value, grid_points, point_name

Reader = Callable[[str], dict[str, Any] | None]
"""A finished run's summary by run name (``grid/<row>/<point>/s<seed>``), ``None`` if unfinished."""


def grid_run(row: Row, point: dict[str, Value], seed: int) -> str:
    """The run name of ``row`` at ``point`` with tuning seed ``seed``."""
    return f"grid/{row.name}/{point_name(point)}/s{seed}"


@dataclass(frozen=True)
class Point:
    """One grid point and its tuning seeds' final validation accuracies."""

    point: dict[str, Value]
    """Axis key -> value."""
    vals: list[float | None]
    """Per tuning seed, in the spec's order; ``None`` while unfinished, ``nan`` without a value."""

    @property
    def mean(self) -> float | None:
        """Mean over the tuning seeds (``None`` until all finished)."""
        if any(v is None for v in self.vals):
            return None
        return sum(v for v in self.vals if v is not None) / len(self.vals)


@dataclass
class GridState:
    """A row's grid as far as its runs have gone."""

    row: Row
    """The spec's row."""
    grid: dict[str, list[Value]]
    """The axes, extensions included."""
    points: list[Point]
    """Every point of ``grid`` in grid order."""
    chosen: dict[str, Value] | None = None
    """The chosen point, once every point finished and no extension is pending."""
    extended: list[str] = field(default_factory=list)
    """Values added beyond the spec's grid, e.g. ``lr 25.6``."""
    refused: str | None = None
    """Why the row's final runs are refused (the best point still on an edge)."""

    def edges(self, axes: tuple[str, ...]) -> list[str]:
        """Keys of ``axes`` (and of every axis of 3+ values) whose end value is the chosen one."""
        if self.chosen is None:
            return []
        return [
            key
            for key, values in self.grid.items()
            if (key in axes or len(values) > 2)
            and len(values) > 1
            and self.chosen[key] in (values[0], values[-1])
        ]


def _score(point: Point) -> float:
    mean = point.mean
    return -math.inf if mean is None or math.isnan(mean) else mean


def next_value(values: list[Value], end: int) -> Value:
    """One step beyond ``values[end]`` (``end`` 0 or -1): geometric for a positive axis with one
    ratio, else the difference of the end pair."""
    x = [float(v) for v in values]  # type: ignore[arg-type]
    a, b = x[end], x[1 if end == 0 else -2]
    ratios = [q / p for p, q in itertools.pairwise(x)] if min(x) > 0 else []
    geometric = bool(ratios) and max(ratios) - min(ratios) <= 1e-9 * max(ratios)
    new = a * a / b if geometric else a + (a - b)
    new = float(f"{new:.12g}")  # 0.1 * 3 -> 0.3, not 0.30000000000000004
    ints = all(isinstance(v, int) for v in values)
    return int(new) if ints and new.is_integer() else new


def resolve(spec: StudySpec, row: Row, read: Reader) -> GridState:
    """The row's grid state from its finished runs (see the module docstring)."""
    grid = {key: list(values) for key, values in row.grid.items()}
    steps: dict[tuple[str, int], int] = {}
    extended: list[str] = []
    while True:
        points = []
        for p in grid_points(grid):
            vals: list[float | None] = []
            for seed in spec.tuning_seeds:
                run = read(grid_run(row, p, seed))
                acc = None if run is None else run.get("final_val_accuracy")
                vals.append(None if run is None else (math.nan if acc is None else float(acc)))
            points.append(Point(p, vals))
        state = GridState(row, grid, points, extended=extended)
        if any(p.mean is None for p in points):
            return state
        best = max(points, key=_score)  # max keeps the first of equal points: grid order
        ends = [
            (key, end)
            for key in spec.extend
            if key in grid and len(grid[key]) > 1
            for end in (0, -1)
            if best.point[key] == grid[key][end]
        ]
        if not ends:
            state.chosen = best.point
            return state
        for key, end in ends:
            if steps.get((key, end), 0) >= spec.max_extensions:
                side = "below" if end == 0 else "beyond"
                state.refused = (
                    f"{row.name}: the best point {point_name(best.point)} still sits on the "
                    f"{'lower' if end == 0 else 'upper'} edge of {key} after "
                    f"{spec.max_extensions} extension(s); add values {side} {grid[key][end]} to "
                    f"rows.{row.name}.grid.{key} in {spec.path.name}, or raise max_extensions"
                )
                return state
            steps[(key, end)] = steps.get((key, end), 0) + 1
            new = next_value(grid[key], end)
            grid[key] = [new, *grid[key]] if end == 0 else [*grid[key], new]
            extended.append(f"{point_name({key: new})}")
