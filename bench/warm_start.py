"""Benchmark: can a warm start hide a larger eigenvalue? Lanczos on a dense symmetric operator.

A 2,000-dimensional operator ``Q diag(spectrum) Q^T`` (random orthogonal ``Q``) whose top
eigenvalues are 1.5 and then either 1.2, 1.05 (a 20% gap) or 1.45, 1.4 (a 3% gap), above a bulk
uniform in (0, 1). For each start (the second eigenvector, the top one, a cold seeded random
vector) and each warm-start mixing weight, it runs ``ds_twophase.probe.lanczos`` from
``start_vector(n, seed, v0)`` for eight seeds with the probe's defaults (``tol`` 1e-3,
``MIN_STEPS``) and prints how often the top eigenvalue was found and the HVPs taken.

    python bench/warm_start.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ds_twophase.probe import eigen  # noqa: E402

N, SEEDS, TOL = 2000, 8, 1e-3


def operator(top: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, Q)``: the dense operator and its eigenvectors (column ``i`` for ``top[i]``)."""
    bulk = torch.rand(N - len(top), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spectrum = torch.cat([torch.tensor(top, dtype=torch.float64), bulk])
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    return q @ torch.diag(spectrum) @ q.T, q


def main() -> None:
    """Print one markdown table row per spectrum and mixing weight."""
    print(f"command: python bench/warm_start.py (n={N}, {SEEDS} seeds, tol {TOL})\n")
    print("| top eigenvalues | mix | start: 2nd eigenvector | start: top eigenvector | cold |")
    print("|---|---:|---|---|---|")
    default = eigen.WARM_START_MIX
    for top in ([1.5, 1.2, 1.05], [1.5, 1.45, 1.4]):
        h, q = operator(top)
        for mix in (0.0, 0.1, default, 0.5):
            eigen.WARM_START_MIX = mix
            cells = []
            for v0 in (q[:, 1], q[:, 0], None):
                found, steps = 0, []
                for seed in range(SEEDS):
                    start = eigen.start_vector(N, seed, v0)
                    r = eigen.lanczos(lambda v, k, h=h: h @ v, start, 80, TOL)
                    found += abs(r.value - top[0]) < 1e-2 * top[0]
                    steps.append(r.steps)
                cells.append(f"top {found}/{SEEDS}, {min(steps)}-{max(steps)} HVPs")
            tag = " (default)" if mix == default else ""
            print(f"| {', '.join(map(str, top))} | {mix}{tag} | " + " | ".join(cells) + " |")
    eigen.WARM_START_MIX = default


if __name__ == "__main__":
    main()
