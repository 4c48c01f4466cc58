"""A run stopped mid-epoch resumes at the next batch even when the optimizer setup builds the loader first.

With ``trainer.max_epochs`` (every real config), Lightning builds the training loader while the optimizer
and its schedule are set up, before it restores the loop state, and then never gives that loader its saved
position: the resumed run replayed its epoch from the start. The data module carries the position instead.
"""

from __future__ import annotations

import csv

import lightning as L
import torch

from conftest import TINY_CONFIGS
from sslvit.cli import run_cli

# 64 images at batch 16: 4 steps per epoch; the stop at step 6 is in the middle of the second epoch.
COMMON = ["--data.train_subset", "64", "--trainer.max_epochs", "3", "--trainer.max_steps", "-1",
          "--checkpoint.last_every_n_steps", "2", "--model.init_args.backbone.depth", "2",
          "--model.init_args.backbone.drop_path_rate", "0.2", "--trainer.limit_val_batches", "1"]  # fmt: skip


class StopAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_mid_epoch_resume_with_max_epochs_equals_the_uninterrupted_run(tmp_path):
    fit = ["fit", "--config", TINY_CONFIGS["mae"], *COMMON]
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "whole")])
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "stopped")], callbacks=[StopAtStep(6)])
    stopped = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == 6 and stopped["SSLDataModule"]["train_position"] == {"epoch": 1, "batches_done": 2}
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "stopped"), "--ckpt_path", "last"])
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True) for run in ("whole", "stopped"))
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"


def test_online_knn_after_a_resume_evaluates_where_the_uninterrupted_run_does(tmp_path):
    """Every epoch of the uninterrupted run (steps 4, 8, 12) is evaluated once, with the same accuracy, by
    the stopped and resumed one; the stop itself adds one evaluation (step 6), as a TimeBudget's end does."""
    knn = ["--trainer.callbacks+=sslvit.eval.OnlineKNN", "--trainer.callbacks.init_args.every_n_epochs", "1",
           "--trainer.callbacks.init_args.train_subset", "24", "--trainer.callbacks.init_args.k", "5"]  # fmt: skip
    fit = ["fit", "--config", TINY_CONFIGS["mae"], *COMMON, *knn]
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "whole")])
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "stopped")], callbacks=[StopAtStep(6)])
    run_cli([*fit, "--trainer.default_root_dir", str(tmp_path / "stopped"), "--ckpt_path", "last"])
    whole, resumed = knn_rows(tmp_path / "whole"), knn_rows(tmp_path / "stopped")
    assert [step for step, _ in whole] == [3, 7, 11], "the end of each epoch (logged at the step before)"
    assert [row for row in resumed if row[0] != 5] == whole and [step for step, _ in resumed].count(5) == 1


def knn_rows(run_dir) -> list[tuple[int, float]]:
    """(step, knn/top1) of every online kNN evaluation in the run's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return [(int(row["step"]), float(row["knn/top1"])) for row in csv.DictReader(f) if row.get("knn/top1")]
