"""A killed run resumes exactly; a crash while writing, NaNs and unsafe checkpoints lose nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_CONFIGS, sslvit, write_image_folder

pytestmark = pytest.mark.slow  # about 10 `sslvit fit` subprocesses

TINY = TINY_CONFIGS["mae"]
# 64 training images at batch 16: 4 steps per epoch, so 10 steps cross two epoch boundaries.
# Drop-path draws from the global RNG, which must resume too.
COMMON = ["--data.train_subset", "64", "--trainer.max_steps", "10", "--trainer.deterministic", "true",
          "--checkpoint.last_every_n_steps", "2", "--trainer.limit_val_batches", "1",
          "--model.init_args.backbone.depth", "2", "--model.init_args.backbone.drop_path_rate", "0.2"]  # fmt: skip


def sslvit_fit(run_dir: Path, *extra: str, callback: dict | None = None) -> subprocess.CompletedProcess:
    args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir)]
    if callback:
        args += ["--trainer.callbacks", json.dumps([callback])]
    return sslvit(*args, *COMMON, *extra)


def load(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("reference")
    out = sslvit_fit(run)
    assert out.returncode == 0, out.stderr[-3000:]
    return load(run)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == 10 and a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


@pytest.mark.parametrize(
    "kill_step,workers",
    [(7, "0"), (9, "1")],  # mid-epoch (last.ckpt at step 6); right after an epoch-end checkpoint (step 8)
)
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, uninterrupted, kill_step, workers):
    run = tmp_path / "run"
    killed = sslvit_fit(
        run,
        "--data.num_workers",
        workers,
        callback={"class_path": "faults.KillAtStep", "init_args": {"step": kill_step}},
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert load(run)["global_step"] == kill_step - 1
    resumed = sslvit_fit(run, "--data.num_workers", workers, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    assert_same_training_state(uninterrupted, load(run))


def test_crash_while_writing_keeps_the_previous_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    out = sslvit_fit(run, callback={"class_path": "faults.KillWhileWritingCheckpoint", "init_args": {"step": 6}})
    assert out.returncode == -9, out.stderr[-3000:]
    last = load(run)  # loads: not truncated
    assert last["global_step"] == 4
    partial = run / "checkpoints" / "last.ckpt.partial"
    assert partial.exists() and partial.stat().st_size < (run / "checkpoints" / "last.ckpt").stat().st_size


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    out = sslvit_fit(run, callback={"class_path": "faults.PoisonBatchAtStep", "init_args": {"step": 5}})
    assert out.returncode == 2
    assert "sslvit: error: training loss is nan at global step 5" in out.stderr and "Traceback" not in out.stderr
    last = load(run)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_unsafe_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": RunsCode()}}, evil)
    out = sslvit_fit(tmp_path / "run", "--ckpt_path", str(evil))
    assert out.returncode == 2 and "sslvit: error: refused to load" in out.stderr, out.stderr[-3000:]
    assert not marker.exists()


def test_corrupt_jpeg_is_named_or_skipped_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=20)
    bad = root / "train" / "class1" / "broken.jpg"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(bad, quality=90)
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    data = ["--data.dataset", "imagefolder", "--data.root", str(root), "--data.train_subset", "null"]
    strict = sslvit_fit(tmp_path / "strict", *data, "--trainer.max_steps", "6")
    assert strict.returncode == 2 and "broken.jpg" in strict.stderr and "skip_corrupt" in strict.stderr
    lenient = sslvit_fit(tmp_path / "lenient", *data, "--trainer.max_steps", "6", "--data.skip_corrupt", "true")
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    metrics = (tmp_path / "lenient" / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("data/skipped_images")
    skipped = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert sum(skipped) >= 1
