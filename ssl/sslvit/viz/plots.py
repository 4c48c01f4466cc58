"""Training curves of a run: loss, learning rate and online kNN accuracy, from its CSV or TensorBoard logs.

A run directory of the ``sslvit`` command holds ``metrics.csv`` (Lightning's CSVLogger) and
``events.out.tfevents.*`` (TensorBoardLogger); either is enough. A metric that was not logged
(e.g. ``knn/top1`` without the online kNN callback) leaves its panel with a note, not an error.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sslvit.errors import ConfigError
from sslvit.viz.figure import DPI

Source = Literal["auto", "csv", "tensorboard"]
XAxis = Literal["step", "epoch"]
CSV_NAME, EVENTS_GLOB = "metrics.csv", "events.out.tfevents.*"
FIGURE_PX = (1350, 380)  # (width, height) of the metrics figure


@dataclass
class MetricSeries:
    """One logged scalar: values at global steps, with the epoch each was logged in (NaN if unknown)."""

    step: np.ndarray  # [T] int, increasing, one value per step (the last one when a step was logged twice)
    epoch: np.ndarray  # [T] float
    value: np.ndarray  # [T] float

    @classmethod
    def from_records(cls, records: list[tuple[int, float, float]]) -> MetricSeries:
        last = {step: (epoch, value) for step, epoch, value in sorted(records, key=lambda r: r[0])}
        steps = sorted(last)
        return cls(
            np.array(steps, dtype=np.int64),
            np.array([last[s][0] for s in steps], dtype=float),
            np.array([last[s][1] for s in steps], dtype=float),
        )


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    value = float(text)
    return None if math.isnan(value) else value


def read_csv_metrics(path: str | Path) -> dict[str, MetricSeries]:
    """Every column of a Lightning ``metrics.csv`` (rows are sparse: one row per logging call)."""
    records: dict[str, list[tuple[int, float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, epoch = _number(row.get("step")), _number(row.get("epoch"))
            if step is None:
                continue
            for name, text in row.items():
                value = _number(text) if name not in ("step", "epoch") else None
                if value is not None:
                    records.setdefault(name, []).append((int(step), math.nan if epoch is None else epoch, value))
    return {name: MetricSeries.from_records(r) for name, r in records.items()}


def read_tensorboard_metrics(folder: str | Path) -> dict[str, MetricSeries]:
    """Every scalar of the event files in ``folder``; epochs from Lightning's ``epoch`` scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    epochs = MetricSeries.from_records([(s, math.nan, v) for s, v in scalars.pop("epoch", [])])

    def epoch_at(step: int) -> float:
        i = np.searchsorted(epochs.step, step, side="right") - 1
        return float(epochs.value[i]) if i >= 0 else math.nan

    return {tag: MetricSeries.from_records([(s, epoch_at(s), v) for s, v in pairs]) for tag, pairs in scalars.items()}


def _single(found: list[Path], what: str, where: Path) -> Path:
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found[:5])
        raise ConfigError(f"{where} holds {len(found)} {what} ({listing}): pass the one to plot")
    return found[0]


def read_metrics(path: str | Path, source: Source = "auto") -> dict[str, MetricSeries]:
    """Metrics of a run: ``path`` is a run directory, a ``metrics.csv`` or an event file.

    ``source="auto"`` prefers ``metrics.csv`` and falls back to TensorBoard event files; a run
    directory is searched recursively (e.g. ``lightning_logs/version_0/``) when they are not at its top.
    """
    path = Path(path)
    if source not in ("auto", "csv", "tensorboard"):
        raise ConfigError(f"source must be auto, csv or tensorboard, got {source!r}")
    if not path.exists():
        raise ConfigError(f"{path} does not exist: pass a run directory (trainer.default_root_dir)")
    if path.is_file():
        return read_csv_metrics(path) if path.suffix == ".csv" else read_tensorboard_metrics(path.parent)
    csv_files = [path / CSV_NAME] if (path / CSV_NAME).is_file() else sorted(path.rglob(CSV_NAME))
    event_dirs = sorted({p.parent for p in path.rglob(EVENTS_GLOB)}, key=lambda p: (p != path, str(p)))
    event_dirs = event_dirs[:1] if event_dirs and event_dirs[0] == path else event_dirs
    if source in ("auto", "csv") and csv_files:
        return read_csv_metrics(_single(csv_files, "metrics.csv files", path))
    if source in ("auto", "tensorboard") and event_dirs:
        return read_tensorboard_metrics(_single(event_dirs, "folders of TensorBoard event files", path))
    wanted = {"auto": f"{CSV_NAME} or {EVENTS_GLOB}", "csv": CSV_NAME, "tensorboard": EVENTS_GLOB}[source]
    raise ConfigError(f"no {wanted} under {path}: pass the run directory a training run wrote its logs to")


# ---- the figure ---------------------------------------------------------------------------------
def _is_loss(name: str) -> bool:
    return "loss" in name.rsplit("/", 1)[-1]


def _is_lr(name: str) -> bool:
    return name.rsplit("/", 1)[-1] == "lr" or name.startswith("lr-")  # sslvit's train/lr; LearningRateMonitor


def _is_knn(name: str) -> bool:
    return name.startswith("knn/")


# (title, y label, which metrics, what to say when none was logged)
PANELS: list[tuple[str, str, Callable[[str], bool], str]] = [
    ("loss", "loss", _is_loss, "no loss was logged"),
    ("learning rate", "learning rate", _is_lr, "no learning rate was logged (train/lr)"),
    ("online kNN accuracy", "accuracy", _is_knn, "no knn/top1 in this run\n(logged by the online kNN callback)"),
]


def _against(series: MetricSeries, x: XAxis) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): per step, or the mean per epoch."""
    if x == "step":
        return series.step.astype(float), series.value
    known = ~np.isnan(series.epoch)
    epochs = np.unique(series.epoch[known])
    return epochs, np.array([series.value[known][series.epoch[known] == e].mean() for e in epochs])


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's debiasing: ``weight`` 0 returns ``values``."""
    out, last, norm = np.empty_like(values, dtype=float), 0.0, 0.0
    for i, v in enumerate(values):
        last, norm = weight * last + (1 - weight) * v, weight * norm + (1 - weight)
        out[i] = last / norm
    return out


def metrics_figure(
    metrics: dict[str, MetricSeries], x: XAxis = "step", smooth: float = 0.0, title: str | None = None
) -> Figure:
    """Three panels (loss, learning rate, kNN accuracy) of ``FIGURE_PX`` pixels against ``x``.

    ``smooth`` in [0, 1) draws an exponential moving average over the raw (faint) curve.
    """
    if x not in ("step", "epoch"):
        raise ConfigError(f"x must be 'step' or 'epoch', got {x!r}")
    if not 0.0 <= smooth < 1.0:
        raise ConfigError(f"smooth must be in [0, 1), got {smooth}")
    if not any(keep(name) for _, _, keep, _ in PANELS for name in metrics):
        raise ConfigError(f"none of loss, learning rate or knn/* was logged; the logs hold {sorted(metrics)}")
    fig = Figure(figsize=(FIGURE_PX[0] / DPI, FIGURE_PX[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    for ax, (name, ylabel, keep, missing) in zip(fig.subplots(1, len(PANELS)), PANELS, strict=True):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("global step" if x == "step" else "epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn = 0
        for metric in sorted(m for m in metrics if keep(m)):
            xs, ys = _against(metrics[metric], x)
            if len(xs) == 0:
                continue
            marker = "o" if len(xs) <= 30 else None
            if smooth > 0 and len(xs) > 1:
                (line,) = ax.plot(xs, ys, alpha=0.25, linewidth=1)
                ax.plot(xs, ema(ys, smooth), color=line.get_color(), label=metric, marker=marker, markersize=3)
            else:
                ax.plot(xs, ys, label=metric, marker=marker, markersize=3)
            drawn += 1
        if drawn:
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            if keep is _is_lr:
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
