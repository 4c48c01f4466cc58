"""The learning rate a run logs is the documented schedule, step by step, written out here by hand.

``base_lr * global batch / 256`` with ``global batch = batch x devices x accumulation``; linear warmup
``(step + 1) / warmup`` of that peak; then half a cosine from the peak down to ``min_lr`` over the
remaining steps. ``train/lr`` (logged every step) is the rate the step at that row trained with.
"""

from __future__ import annotations

import csv
import math

import pytest

from conftest import TINY_CONFIGS
from sslvit.cli import run_cli

BASE_LR, MIN_LR, BATCH, TOTAL = 1e-3, 2e-5, 16, 8


def hand_schedule(step: int, peak: float, warmup: int, total: int, min_lr: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return min_lr + (peak - min_lr) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize(
    "warmup_args,accumulate,warmup",
    [
        (["--model.init_args.warmup_steps", "3"], 1, 3),
        # 64 images at batch 16 with 2 batches per step: 2 steps an epoch, so 1.5 epochs of warmup are 3 steps
        (["--model.init_args.warmup_steps", "null", "--model.init_args.warmup_epochs", "1.5"], 2, 3),
    ],
    ids=["warmup_steps", "warmup_epochs_with_accumulation"],
)
def test_logged_lr_follows_hand_written_warmup_and_cosine(tmp_path, warmup_args, accumulate, warmup):
    run = tmp_path / "run"
    run_cli(
        [
            "fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(run),
            "--trainer.max_steps", str(TOTAL), "--trainer.log_every_n_steps", "1",
            "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.limit_val_batches", "0",
            "--data.batch_size", str(BATCH), "--data.train_subset", "64",
            "--model.init_args.base_lr", str(BASE_LR), "--model.init_args.min_lr", str(MIN_LR),
            *warmup_args,
        ]
    )  # fmt: skip
    with open(run / "metrics.csv") as f:
        logged = {int(row["step"]): float(row["train/lr"]) for row in csv.DictReader(f) if row.get("train/lr")}
    assert sorted(logged) == list(range(TOTAL)), "one train/lr per optimizer step"
    peak = BASE_LR * BATCH * 1 * accumulate / 256  # one device
    expected = {step: hand_schedule(step, peak, warmup, TOTAL, MIN_LR) for step in range(TOTAL)}
    assert logged == pytest.approx(expected, rel=1e-5)
    assert logged[warmup - 1] == pytest.approx(peak, rel=1e-5), "warmup ends at the peak"
