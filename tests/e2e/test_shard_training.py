"""Shards end to end: tools/make_shards.py, two ranks covering an epoch, SIGKILL and resume, evaluation tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, load_script, sslvit, write_image_folder
from sslvit.seeding import sample_key

pytestmark = pytest.mark.slow  # 5 `sslvit fit` subprocesses

# 64 training images in 7 shards of 10 (the last holds 4); batch 16: 4 steps per epoch.
COMMON = ["--data.dataset", "webdataset", "--data.num_workers", "1", "--trainer.limit_val_batches", "1",
          "--trainer.accelerator", "cpu", "--model.init_args.backbone.drop_path_rate", "0.2"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_image_folder(root / "images", classes=2, per_class=32)
    load_script("tools/make_shards.py").main(
        ["--data-root", str(root / "images"), "--output", str(root / "shards"), "--samples-per-shard", "10"]
    )
    return root / "shards"


def fit(run_dir: Path, shards: Path, *extra: str, callbacks: list | None = None):
    args = ["fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(run_dir),
            "--data.root", str(shards), *COMMON, *extra]  # fmt: skip
    if callbacks:
        args += ["--trainer.callbacks", json.dumps(callbacks)]
    return sslvit(*args)


def test_two_ranks_cover_every_sample_once_per_epoch_then_the_tools_read_the_shards(shards, tmp_path):
    record = {"class_path": "recorders.RecordKeys", "init_args": {"path": str(tmp_path / "keys")}}
    out = fit(tmp_path / "ddp", shards, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size",
              "8", "--trainer.max_epochs", "2", "--trainer.max_steps", "-1", callbacks=[record])  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"keys.rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        keys = ranks[0][epoch] + ranks[1][epoch]
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == 32
        assert sorted(keys) == sorted(sample_key(0, int(epoch), index) for index in range(64)), "each sample once"

    knn = load_script("tools/knn_eval.py").main(
        ["--checkpoint", str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"), "--dataset", "webdataset",
         "--data-root", str(shards), "--num-workers", "0", "--no-cache", "--ks", "5", "--k", "5"]
    )  # fmt: skip
    assert (knn["dataset"], knn["num_train"], knn["num_val"]) == ("webdataset", 64, 32)


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(shards, tmp_path):
    steps = ["--trainer.max_steps", "7", "--trainer.deterministic", "true", "--checkpoint.last_every_n_steps", "2"]
    reference = fit(tmp_path / "reference", shards, *steps)
    assert reference.returncode == 0, reference.stderr[-3000:]
    kill = {"class_path": "faults.KillAtStep", "init_args": {"step": 7}}  # last.ckpt at step 6, mid-epoch 2
    killed = fit(tmp_path / "run", shards, *steps, callbacks=[kill])
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = fit(tmp_path / "run", shards, *steps, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        for d in (tmp_path / "reference", tmp_path / "run")
    )
    assert a["global_step"] == b["global_step"] == 7
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"
