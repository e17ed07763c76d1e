"""``ds-twophase plot``: LR, training loss, validation accuracy and hmax against epoch, and the
training samples' normalised margin (median with its interquartile band) when a run recorded it
(``trainer.margins_every``).

The figure has one panel per quantity; every run is one colour, labelled by setting and seed,
with its plateau (dotted), phase switch (dashed) and decays (thin solid) as vertical lines in
every panel. :func:`plot_data` gathers what is drawn (tested without matplotlib);
:func:`draw` renders it and needs the ``plot`` extra (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from .runs import Run

PANELS = (
    ("lr", "learning rate"),
    ("train_loss", "training loss"),
    ("val_accuracy", "validation accuracy"),
    ("hmax", "hmax"),
)
"""``(metrics.jsonl key, axis label)`` of each panel, in drawing order."""

MARGIN_PANEL = ("margin_median", "margin (median, q1-q3)")
"""The fifth panel, drawn when some run has margins; its band is ``margin_q1``..``margin_q3``."""
MARGIN_BAND = ("margin_q1", "margin_q3")

MARKER_STYLES: dict[str, Literal[":", "--", "-"]] = {"plateau": ":", "switch": "--", "decay": "-"}
"""Line style of each kind of vertical marker."""

FORMATS = {".png", ".svg", ".pdf"}

MISSING_MATPLOTLIB = (
    'plot: matplotlib is not installed; install the plot extra: pip install -e ".[plot]"'
)


@dataclass
class RunCurves:
    """What the figure shows of one run."""

    label: str
    """Legend label (setting and seed)."""
    curves: dict[str, tuple[list[int], list[float]]]
    """Panel key -> ``(epochs, values)``, nulls skipped."""
    markers: dict[str, list[int]] = field(default_factory=dict)
    """``plateau``/``switch``/``decay`` -> epochs to mark."""


def plot_data(runs: Sequence[Run]) -> list[RunCurves]:
    """The curves and marker epochs of each run, exactly as :func:`draw` will draw them."""
    labels = [run.label for run in runs]
    data = []
    for run, label in zip(runs, labels, strict=True):
        if labels.count(label) > 1:  # same setting and seed twice: tell them apart by directory
            label = f"{label} ({run.path.name})"
        ev = run.events
        markers = {
            "plateau": [] if ev.plateau is None else [ev.plateau],
            "switch": [] if ev.switch is None else [ev.switch],
            "decay": list(ev.decays),
        }
        keys = [key for key, _ in PANELS] + [MARGIN_PANEL[0], *MARGIN_BAND]
        curves = {key: run.column(key) for key in keys}
        data.append(RunCurves(label=label, curves=curves, markers=markers))
    return data


def panels(data: Sequence[RunCurves]) -> tuple[tuple[str, str], ...]:
    """The panels to draw: :data:`PANELS`, plus :data:`MARGIN_PANEL` when a run has margins."""
    if any(run.curves.get(MARGIN_PANEL[0], ([], []))[0] for run in data):
        return (*PANELS, MARGIN_PANEL)
    return PANELS


def check_output(path: str | Path) -> Path:
    """The output path, refused with one line when its extension is not a format we write."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"-o {path}: unknown image format '{path.suffix}'; use a file ending in "
            + ", ".join(sorted(FORMATS))
        )
    return path


def draw(data: Sequence[RunCurves], path: str | Path, title: str | None = None) -> Path:
    """Render ``data`` to ``path`` (format from the extension); returns the path."""
    path = check_output(path)
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must precede pyplot
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise ConfigError(MISSING_MATPLOTLIB) from None

    shown = panels(data)
    rows = (len(shown) + 1) // 2
    fig, grid = plt.subplots(rows, 2, figsize=(10, 3.25 * rows), sharex=True)
    axes = grid.flat[: len(shown)]
    for ax in grid.flat[len(shown) :]:
        ax.set_visible(False)
        # the panel above a hidden one is the lowest of its column: it shows the epochs
        grid.flat[len(shown) - 2].xaxis.set_tick_params(labelbottom=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(data):
        color = colors[i % len(colors)]
        for ax, (key, _) in zip(axes, shown, strict=True):
            epochs, values = run.curves[key]
            style = "o-" if key in ("hmax", MARGIN_PANEL[0]) else "-"
            ax.plot(epochs, values, style, color=color, markersize=2.5, linewidth=1.2)
            if key == MARGIN_PANEL[0]:
                (band_epochs, low), (_, high) = (run.curves[k] for k in MARGIN_BAND)
                ax.fill_between(band_epochs, low, high, color=color, alpha=0.2, linewidth=0)
            for kind, marks in run.markers.items():
                for epoch in marks:
                    ax.axvline(
                        epoch,
                        color=color,
                        linestyle=MARKER_STYLES[kind],
                        linewidth=1.0,
                        alpha=0.8,
                    )
    for ax, (key, label) in zip(axes, shown, strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        has_positive = any(v > 0 for run in data for v in run.curves[key][1])
        if key in ("train_loss", "hmax") and has_positive:
            ax.set_yscale("log")
    for ax in axes[-2:]:
        ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=colors[i % len(colors)]) for i in range(len(data))]
    labels = [run.label for run in data]
    handles += [Line2D([], [], color="gray", linestyle=s) for s in MARKER_STYLES.values()]
    labels += list(MARKER_STYLES)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * (len(labels) // 5), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
