"""The ``plot``, ``report`` and ``margins`` subcommands of ``ds-twophase`` (see ds_twophase.cli)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from ..args import ArgumentParser, report
from ..errors import ConfigError


def plot_main(argv: Sequence[str]) -> int:
    """``ds-twophase plot RUN_DIR [RUN_DIR ...] [-o FILE] [--title TEXT]``."""
    parser = ArgumentParser(
        prog="ds-twophase plot",
        description="LR, training loss, validation accuracy and hmax against epoch, with the "
        "plateau, phase switch and decays marked; several runs are overlaid.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="trainer output directories")
    parser.add_argument(
        "-o",
        "--output",
        default="plot.png",
        help="image file; .png, .svg or .pdf (default plot.png)",
    )
    parser.add_argument("--title", default=None, help="figure title")
    from .plot import check_output, draw, plot_data
    from .runs import load_run

    try:
        args = parser.parse_args(argv)
        check_output(args.output)
        path = draw(plot_data([load_run(r) for r in args.runs]), args.output, args.title)
    except ConfigError as exc:
        return report(exc)
    print(f"wrote {path}")
    return 0


def report_main(argv: Sequence[str]) -> int:
    """``ds-twophase report RUN_DIR [RUN_DIR ...] [--csv]``."""
    parser = ArgumentParser(
        prog="ds-twophase report",
        description="Group runs by config (all seeds of a setting together) and print mean ± std "
        "per group, like the paper's tables.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="trainer output directories")
    parser.add_argument(
        "--csv", action="store_true", help="CSV with raw numbers instead of Markdown"
    )
    from .report import table_rows, to_csv, to_markdown
    from .runs import load_run

    try:
        args = parser.parse_args(argv)
        rows = table_rows([load_run(r) for r in args.runs])
    except ConfigError as exc:
        return report(exc)
    sys.stdout.write(to_csv(rows) if args.csv else to_markdown(rows))
    return 0


def margins_main(argv: Sequence[str]) -> int:
    """``ds-twophase margins RUN_DIR_OR_CHECKPOINT [--batch-size N] [--classes top2|label] ...``."""
    parser = ArgumentParser(
        prog="ds-twophase margins",
        description="Normalised output margins of the training samples (paper Appendix A.1): "
        "quartiles and interquartile range.",
    )
    parser.add_argument(
        "path",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="trainer output directory or a checkpoint in it",
    )
    parser.add_argument("--batch-size", type=int, default=512, help="samples per forward/backward")
    parser.add_argument(
        "--classes",
        choices=("top2", "label"),
        default="top2",
        help="margin between the top two classes (default) or the label and the best other class",
    )
    parser.add_argument("--split", choices=("train", "val"), default="train", help="which samples")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    from .margins import load_trained, margin_summary

    try:
        args = parser.parse_args(argv)
        for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag}: must be a positive integer, got {value}")
        model, train, val = load_trained(args.path)
    except ConfigError as exc:
        return report(exc)
    data = train if args.split == "train" else val
    summary = margin_summary(model, data, "cpu", args.batch_size, args.classes, args.limit)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['margin_samples']} {args.split} samples ({args.classes}), "
        f"{summary['margin_seconds']:.2f} s"
    )
    for key in ("margin_q1", "margin_median", "margin_q3", "margin_iqr", "margin_iq_mean"):
        print(f"  {key.removeprefix('margin_'):>8}: {summary[key]:.6g}")
    return 0
