"""The online kNN of a run reports the number tools/knn_eval.py gives for the run's checkpoint.

Same weights (the run's last.ckpt is written at the step the callback evaluated), same bank (the
whole labelled train split), same k, T and feature, same evaluation transform (taken from the
checkpoint by the tool: image size and centre-crop fraction). The classes are hard to tell apart, so the
accuracy is far from 0 and 100% and any difference in bank, k, T, feature or transform would show.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CONFIGS, load_script
from sslvit.cli import run_cli

knn_eval = load_script("tools/knn_eval.py")
K, T = 7, 0.5  # not the defaults (20, 0.07), and a T far enough from 0.07 to change this accuracy


def write_hard_image_folder(root: Path, classes: int = 10, train: int = 16, val: int = 8, size: int = 20) -> Path:
    """Each class a faint colour under strong noise: a random encoder's kNN is well above chance, far below 100%."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(-20, 20, (classes, 3))
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = 128 + colours[c] + rng.normal(0, 50, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_online_knn_top1_equals_knn_eval_on_the_runs_checkpoint(tmp_path):
    data = write_hard_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    online = {
        "class_path": "sslvit.eval.OnlineKNN",
        "init_args": {"every_n_epochs": 1, "train_subset": None, "k": K, "temperature": T, "pooling": "cls"},
    }
    cli = run_cli(
        ["fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
         "--data.dataset", "imagefolder", "--data.root", str(data), "--data.eval_crop_fraction", "0.8",
         "--trainer.callbacks", json.dumps([online])]
    )  # fmt: skip
    assert cli.trainer.global_step == 2
    with open(run / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("knn/top1")]
    assert len(rows) == 1, "one evaluation, at the end of the run"
    online_top1, online_top5 = float(rows[0]["knn/top1"]), float(rows[0]["knn/top5"])

    record = knn_eval.main(
        ["--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--data-root", str(data), "--features", "cls",
         "--k", str(K), "--ks", str(K), "--temperature", str(T), "--batch-size", "16", "--num-workers", "0",
         "--no-cache"]
    )  # fmt: skip
    assert record["global_step"] == 2 and record["num_train"] == 10 * 16 and record["num_val"] == 10 * 8
    assert 25 < record["top1"] < 90 and record["top5"] < 100, "far from chance and from 100%: differences would show"
    assert online_top1 == pytest.approx(record["top1"], abs=1e-4)
    assert online_top5 == pytest.approx(record["top5"], abs=1e-4)
