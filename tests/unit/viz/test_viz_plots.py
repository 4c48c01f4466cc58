"""Training curves from hand-written logs: parsing, missing metrics, the kNN panel, errors."""

import numpy as np
import pytest
from PIL import Image

from sslvit.errors import ConfigError
from sslvit.viz.figure import save_png
from sslvit.viz.plots import FIGURE_PX, ema, metrics_figure, read_metrics

# Lightning's CSVLogger layout: sparse rows; step 3 was logged twice (a resumed run) and the later value wins.
CSV = """epoch,step,train/loss,train/lr,val/loss,knn/top1
0,0,2.0,0.1,,
0,1,1.5,0.2,,
0,1,,,1.4,
0,1,,,,0.25
1,2,1.0,0.3,,
1,3,0.9,0.3,,
1,3,0.8,0.25,,
1,3,,,0.7,0.5
"""


def labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_csv_columns_become_series(tmp_path):
    (tmp_path / "metrics.csv").write_text(CSV)
    metrics = read_metrics(tmp_path)
    assert sorted(metrics) == ["knn/top1", "train/loss", "train/lr", "val/loss"]
    loss = metrics["train/loss"]
    assert list(loss.step) == [0, 1, 2, 3] and list(loss.value) == [2.0, 1.5, 1.0, 0.8]
    assert list(loss.epoch) == [0, 0, 1, 1]
    assert list(metrics["knn/top1"].value) == [0.25, 0.5]


def test_every_panel_is_drawn_against_steps_or_epochs(tmp_path):
    (tmp_path / "metrics.csv").write_text(CSV)
    metrics = read_metrics(tmp_path / "metrics.csv")
    fig = metrics_figure(metrics, x="epoch")
    loss, lr, knn = fig.axes
    assert labels(loss) == ["train/loss", "val/loss"] and labels(lr) == ["train/lr"] and labels(knn) == ["knn/top1"]
    x, y = loss.lines[0].get_data()
    assert list(x) == [0, 1] and np.allclose(y, [(2.0 + 1.5) / 2, (1.0 + 0.8) / 2]), "mean per epoch"
    assert loss.get_xlabel() == "epoch"
    path = save_png(metrics_figure(metrics, x="step", smooth=0.5), tmp_path / "curves.png")
    assert Image.open(path).size == FIGURE_PX


def test_missing_metrics_leave_a_note(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.5\n")
    fig = metrics_figure(read_metrics(tmp_path))
    loss, lr, knn = fig.axes
    assert labels(loss) == ["train/loss"] and not lr.lines and not knn.lines
    assert "no knn/top1" in knn.texts[0].get_text() and "no learning rate" in lr.texts[0].get_text()


def test_unusable_logs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no metrics.csv or events.out.tfevents"):
        read_metrics(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(CSV)
    with pytest.raises(ConfigError, match="holds 2 metrics.csv files"):
        read_metrics(tmp_path)
    assert "train/loss" in read_metrics(tmp_path / "a")
    with pytest.raises(ConfigError, match="the logs hold \\['other/acc'\\]"):
        (tmp_path / "a" / "metrics.csv").write_text("epoch,step,other/acc\n0,0,1.0\n")
        metrics_figure(read_metrics(tmp_path / "a"))


def test_ema_is_debiased_moving_average():
    values = np.array([1.0, 3.0, 3.0])
    assert np.allclose(ema(values, 0.0), values)
    # first value unchanged by the debiasing; then (0.5 * 0.5 + 0.5 * 3) / (1 - 0.25)
    assert np.allclose(ema(values, 0.5)[:2], [1.0, (0.25 + 1.5) / 0.75])
