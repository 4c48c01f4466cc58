"""Every YAML under configs/ builds and takes one real optimizer step, as shipped apart from its sizes.

Each config is run through the ``sslvit`` command (in process) on a tiny generated ImageFolder with a
shrunk backbone, decoder, tokenizer or context network, on one CPU, for one optimizer step. Everything
else stays as shipped: the method and its settings, callbacks (online kNN included), checkpointing,
precision, gradient accumulation, augmentations. A broken class path, key, value or callback in any
config fails here. New files under configs/ are picked up by the glob.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from conftest import REPO, write_image_folder
from sslvit.cli import run_cli

CONFIGS = sorted(REPO.glob("configs/**/*.yaml"))

# The backbone every config is shrunk to: 16 px images, 4 px patches, 2 blocks 32 wide.
BACKBONE = {"img_size": "16", "patch_size": "4", "embed_dim": "32", "depth": "2", "num_heads": "2"}
# What else is sized per method (the rest of each method's settings stays as shipped).
SHRINK = {
    "sslvit.methods.MAE": {"decoder_embed_dim": "16", "decoder_depth": "1", "decoder_num_heads": "2"},
    "sslvit.methods.BEiT": {
        "codebook.vocab_size": "16",
        "codebook.patches_per_code": "8",
        "codebook.iterations": "2",
    },
    # CPC's backbone sees one patch: 4 px patches of 2x2 tokens, stride 2 on 16 px images (a 7x7 grid)
    "sslvit.methods.CPC": {
        "image_size": "16",
        "patch_stride": "2",
        "context_dim": "32",
        "context_heads": "2",
        "backbone.img_size": "4",
        "backbone.patch_size": "2",
    },
    "sslvit.eval.FineTune": {},
}


class WeightsBeforeFirstStep(Callback):
    """Copies of the model's weights before its first training batch."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.before is None:
            self.before = {k: v.detach().clone() for k, v in pl_module.named_parameters()}


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    # 3 classes x 8 train images: 24 >= the online kNN's k = 20; 4 val images per class.
    return write_image_folder(tmp_path_factory.mktemp("configs") / "images", classes=3, per_class=8, size=16)


def shrink_args(config: dict) -> list[str]:
    class_path = config["model"]["class_path"]
    assert class_path in SHRINK, f"add how to shrink {class_path} to SHRINK in this test"
    settings = {f"backbone.{k}": v for k, v in BACKBONE.items()} | SHRINK[class_path]
    return [arg for key, value in settings.items() for arg in (f"--model.init_args.{key}", value)]


@pytest.mark.parametrize("config_file", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_shipped_config_builds_and_takes_one_optimizer_step(config_file, tiny_images, tmp_path):
    config = yaml.safe_load(config_file.read_text())
    run = tmp_path / "run"
    recorder = WeightsBeforeFirstStep()
    args = [
        "fit", "--config", str(config_file),
        "--trainer.default_root_dir", str(run),
        # one CPU process instead of the GPUs/nodes a config may name; one optimizer step
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
        "--trainer.strategy", "auto", "--trainer.max_steps", "1",
        # the tiny generated ImageFolder, 4 images a batch (mixup needs an even batch), no loader processes
        "--data.dataset", "imagefolder", "--data.root", str(tiny_images), "--data.image_size", "16",
        "--data.batch_size", "4", "--data.num_workers", "0",
        *shrink_args(config),
    ]  # fmt: skip
    cli = run_cli(args, callbacks=[recorder])

    trainer, model = cli.trainer, cli.model
    assert trainer.global_step == 1, "exactly one optimizer step"
    assert type(model).__name__ == config["model"]["class_path"].rsplit(".", 1)[-1]
    loss = trainer.callback_metrics["train/loss"].item()
    assert math.isfinite(loss), f"train/loss is {loss}"
    # The step updated the weights: every trainable weight moved (AdamW's first step moves each parameter
    # with a gradient by about the learning rate), so no part of the model is cut off from the loss.
    assert recorder.before is not None, "no training batch was run"
    after = dict(model.named_parameters())
    trainable = [k for k, p in after.items() if p.requires_grad]
    unchanged = [k for k in trainable if torch.equal(after[k].detach(), recorder.before[k])]
    assert not unchanged, f"weights the step left as they were: {unchanged}"

    # The shipped callbacks are the trainer's (a class path that is no callback would have failed to build).
    shipped = [c["class_path"].rsplit(".", 1)[-1] for c in config.get("trainer", {}).get("callbacks", [])]
    present = [type(c).__name__ for c in trainer.callbacks]
    assert all(name in present for name in shipped), (shipped, present)
    if "OnlineKNN" in shipped:  # the run ended, so the online kNN evaluated the trained encoder
        assert 0.0 <= trainer.callback_metrics["knn/top1"].item() <= 100.0
    # The run directory the docs describe: its config and a checkpoint at step 1 (metrics.csv only once
    # something is logged: train/loss every log_every_n_steps, 10 to 50 steps in the configs).
    assert (run / "config.yaml").is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1
