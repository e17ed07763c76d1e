"""Summary statistics over seeds: mean and sample std, percentile-bootstrap intervals.

All functions take plain sequences of floats and return floats, so benches and reports share
them::

    mean_std([91.2, 92.0, 91.6])                 # (91.6, 0.4)
    bootstrap_ci([91.2, 92.0, 91.6], level=0.95) # (low, high) for the mean
    paired_difference(a, b)                      # mean(a - b), its std and bootstrap interval
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for a single value).

    The sample std is what "mean +- std over 5 seeds" tables report. Raises ``ValueError`` on an
    empty sequence.
    """
    if len(values) == 0:
        raise ValueError("mean_std: no values")
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), std


def standard_error_from_sums(total: float, squares: float, count: float) -> float:
    """Standard error of a mean from the sum, the sum of squares and the number of its values
    (``s / sqrt(n)``, ``s`` the sample std): what processes can all-reduce instead of the values.
    ``nan`` for fewer than two values."""
    if count < 2:
        return math.nan
    var = max(squares - total * total / count, 0.0) / (count - 1)  # rounding can give -0
    return math.sqrt(var / count)


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, n: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of ``values``.

    Draws ``n`` resamples (with replacement, same size) from a generator seeded with ``seed``, so
    the interval is reproducible; returns the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the
    resampled means. With one value (or identical values) the interval is that value.
    """
    if len(values) == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError(f"bootstrap_ci: n must be >= 1, got {n}")
    array = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, len(array), size=(n, len(array)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n: int = 10000, seed: int = 0
) -> dict[str, float]:
    """``a - b`` paired element by element (e.g. the same seeds under two settings).

    Returns ``mean`` and ``std`` of the differences and the bootstrap interval of their mean as
    ``low``/``high``. Raises ``ValueError`` when the lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}; pair them by seed")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(diffs)
    low, high = bootstrap_ci(diffs, level=level, n=n, seed=seed)
    return {"mean": mean, "std": std, "low": low, "high": high}


def format_mean_std(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std"`` of ``values * scale`` (``"-"`` for no values)."""
    finite = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    mean, std = mean_std(finite)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
