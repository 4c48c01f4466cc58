"""Two CPU processes (DDP over gloo) train exactly like one process on the same global batch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, read_run, sslvit

pytestmark = pytest.mark.slow

TINY = TINY_CONFIGS["mae"]
# 128 images, global batch 32: 4 steps per epoch; 6 steps cross an epoch boundary. Drop path is on:
# each sample's stochastic depth follows its key, so ranks (which Lightning seeds alike) do not repeat it
# (2 blocks: the rate rises from 0 at the first block to 0.3 at the last).
COMMON = ["--data.train_subset", "128", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "1",
          "--trainer.accelerator", "cpu", "--data.num_workers", "0",
          "--model.init_args.backbone.depth", "2", "--model.init_args.backbone.drop_path_rate", "0.3"]  # fmt: skip


def fit(run_dir: Path, *extra: str) -> dict:
    out = sslvit("fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *COMMON, *extra)
    assert out.returncode == 0, out.stderr[-4000:]
    return read_run(run_dir)


# Online kNN every epoch and at the end (steps 4 and 6), a bank of 24 train digits, k = 5.
KNN = ["--trainer.callbacks+=sslvit.eval.OnlineKNN", "--trainer.callbacks.init_args.every_n_epochs", "1",
       "--trainer.callbacks.init_args.train_subset", "24", "--trainer.callbacks.init_args.k", "5"]  # fmt: skip


# Online RankMe at the same epochs, on 100 of the pretrain images (no labels read).
RANKME = ["--trainer.callbacks+=sslvit.eval.OnlineRankMe", "--trainer.callbacks.init_args.every_n_epochs", "1",
          "--trainer.callbacks.init_args.num_images", "100"]  # fmt: skip


def knn_rows(run_dir: Path, key: str = "knn/top1") -> list[tuple[int, float]]:
    """(step, value of ``key``) of every online evaluation in metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key)]


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    single = fit(tmp_path / "single", "--trainer.devices", "1", "--data.batch_size", "32", *KNN, *RANKME)
    ddp = fit(tmp_path / "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "16",
              *KNN, *RANKME)  # fmt: skip
    assert ddp["ckpt"]["global_step"] == single["ckpt"]["global_step"] == 6
    # the learning rate follows the global batch: 1e-3 * (16 x 2 devices) / 256, as for 32 x 1
    assert len(single["losses"]) == len(ddp["losses"]) == 6
    # same samples, same per-sample masks and drop paths: the global-batch loss is the same at every step
    assert torch.allclose(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5)
    for key, value in single["ckpt"]["state_dict"].items():
        assert torch.allclose(ddp["ckpt"]["state_dict"][key], value, atol=2e-5), key
    assert ddp["ckpt"]["hyper_parameters"] == single["ckpt"]["hyper_parameters"]
    # The online kNN: evaluated at the same steps, with the same accuracy (features gathered in dataset
    # order: every rank classifies the same bank and queries, so rank 0's logged value is every rank's).
    assert [step for step, _ in knn_rows(tmp_path / "single")] == [3, 5], "after epoch 1 (step 4) and at the end"
    assert knn_rows(tmp_path / "ddp") == knn_rows(tmp_path / "single")
    # RankMe the same way: each rank encodes half of the 100 images, every rank computes it on all of them
    single_rank, ddp_rank = (knn_rows(tmp_path / run, "rankme") for run in ("single", "ddp"))
    assert [step for step, _ in ddp_rank] == [step for step, _ in single_rank] == [3, 5]
    assert [rank for _, rank in ddp_rank] == pytest.approx([rank for _, rank in single_rank], rel=1e-4)
