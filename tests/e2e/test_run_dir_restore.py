"""A resumed run that fails after rewriting config.yaml but before its first step leaves the run directory
byte for byte as it was (docs/reliability.md: "A failed start leaves the run directory as it was").

Unlike a refused resume (refused before anything is written), these failures come after Lightning has
rewritten config.yaml with the new settings, saved hparams.yaml and opened a new TensorBoard events
file, so the directory must be put back: old bytes for the old files, new files removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_CONFIGS, write_image_folder
from sslvit.cli import run_cli
from sslvit.errors import CorruptImageError


def fit(run: Path, data: Path, *extra: str):
    return run_cli(
        ["fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(run),
         "--data.dataset", "imagefolder", "--data.root", str(data), *extra]
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def claim_run(tmp_path) -> tuple[Path, Path, dict[str, bytes | None]]:
    """A run of 3 steps on a 2-class ImageFolder of 32 training images (2 steps an epoch), and its files."""
    data = write_image_folder(tmp_path / "images", classes=2, per_class=16)
    run = tmp_path / "run"
    assert fit(run, data).trainer.global_step == 3
    before = snapshot(run)
    for name in ("config.yaml", "hparams.yaml", "metrics.csv", "checkpoints/last.ckpt"):
        assert before.get(name), f"the finished run has no {name}"
    assert any("events.out.tfevents" in name for name in before)
    return run, data, before


def fault(copy_to: Path, error: str | None) -> list[str]:
    callback = {"class_path": "faults.FailAtTrainStart", "init_args": {"copy_config_to": str(copy_to), "error": error}}
    return ["--trainer.callbacks", json.dumps([callback])]


def assert_restored(run: Path, before: dict[str, bytes | None], config_at_failure: Path, changed: str) -> None:
    # the failure came after config.yaml was rewritten with the resumed run's settings ...
    assert changed in config_at_failure.read_text() and config_at_failure.read_bytes() != before["config.yaml"]
    # ... and the directory is back as it was: same files, same bytes, nothing new
    after = snapshot(run)
    assert sorted(after) == sorted(before), (
        f"added {sorted(set(after) - set(before))}, lost {sorted(set(before) - set(after))}"
    )
    assert [name for name in before if after[name] != before[name]] == []


def test_failure_at_train_start_of_a_resumed_run_restores_the_run_directory(claim_run, tmp_path):
    run, data, before = claim_run
    config_at_failure = tmp_path / "config-at-failure.yaml"
    with pytest.raises(RuntimeError, match="injected failure at train start"):
        fit(run, data, "--ckpt_path", "last", "--trainer.max_steps", "6", "--model.init_args.base_lr", "0.002",
            *fault(config_at_failure, "RuntimeError"))  # fmt: skip
    assert_restored(run, before, config_at_failure, "base_lr: 0.002")


def test_unreadable_image_in_the_first_batch_of_a_resumed_run_restores_the_run_directory(claim_run, tmp_path):
    """Resumed on another copy of the data whose training images cannot be decoded: the first batch fails."""
    run, data, before = claim_run
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    for image in (broken / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature and nothing readable
    config_at_failure = tmp_path / "config-at-failure.yaml"
    with pytest.raises(CorruptImageError, match=r"cannot read image .*broken/train/class\d/\d+\.png"):
        fit(run, broken, "--ckpt_path", "last", "--trainer.max_steps", "6", *fault(config_at_failure, None))
    assert_restored(run, before, config_at_failure, f"root: {broken}")


def test_ctrl_c_at_train_start_of_a_resumed_run_restores_the_run_directory(claim_run, tmp_path):
    run, data, before = claim_run
    config_at_failure = tmp_path / "config-at-failure.yaml"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        fit(run, data, "--ckpt_path", "last", "--trainer.max_steps", "6", "--model.init_args.base_lr", "0.002",
            *fault(config_at_failure, "KeyboardInterrupt"))  # fmt: skip
    assert_restored(run, before, config_at_failure, "base_lr: 0.002")
