"""Two CPU processes (DDP over gloo) train exactly like one process on the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, read_run, sslvit

pytestmark = pytest.mark.slow

TINY = TINY_CONFIGS["mae"]
# 128 images, global batch 32: 4 steps per epoch; 6 steps cross an epoch boundary.
COMMON = ["--data.train_subset", "128", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "1",
          "--trainer.accelerator", "cpu", "--data.num_workers", "0"]  # fmt: skip


def fit(run_dir: Path, *extra: str) -> dict:
    out = sslvit("fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *COMMON, *extra)
    assert out.returncode == 0, out.stderr[-4000:]
    return read_run(run_dir)


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    single = fit(tmp_path / "single", "--trainer.devices", "1", "--data.batch_size", "32")
    ddp = fit(tmp_path / "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "16")
    assert ddp["ckpt"]["global_step"] == single["ckpt"]["global_step"] == 6
    # the learning rate follows the global batch: 1e-3 * (16 x 2 devices) / 256, as for 32 x 1
    assert len(single["losses"]) == len(ddp["losses"]) == 6
    # same samples, same per-sample masks: the global-batch loss is the same at every step
    assert torch.allclose(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5)
    for key, value in single["ckpt"]["state_dict"].items():
        assert torch.allclose(ddp["ckpt"]["state_dict"][key], value, atol=2e-5), key
    assert ddp["ckpt"]["hyper_parameters"] == single["ckpt"]["hyper_parameters"]
