"""Training curves of a run (loss, learning rate, online kNN accuracy) as a PNG.

    python tools/plot_metrics.py runs/<run dir> --output curves.png

Reads the run's metrics.csv, or its TensorBoard event files when there is no CSV (--source picks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors
from sslvit.viz.figure import save_png
from sslvit.viz.plots import metrics_figure, read_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("run", help="run directory (trainer.default_root_dir), a metrics.csv or an event file")
    parser.add_argument("--output", default="curves.png", help="PNG file to write")
    parser.add_argument("--x", choices=["step", "epoch"], default="step", help="x axis (epoch: mean per epoch)")
    parser.add_argument("--source", choices=["auto", "csv", "tensorboard"], default="auto")
    parser.add_argument("--smooth", type=float, default=0.0, help="moving-average weight in [0, 1), as in TensorBoard")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        metrics = read_metrics(args.run, args.source)
        path = save_png(metrics_figure(metrics, args.x, args.smooth, title=str(Path(args.run))), args.output)
    print(f"wrote {path}: {', '.join(f'{k} ({len(v.step)})' for k, v in sorted(metrics.items()))}")


if __name__ == "__main__":
    main()
