"""The `sslvit` command end to end on a seconds-long config."""

import csv
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, sslvit
from sslvit.cli import main, run_cli

TINY = TINY_CONFIGS["mae"]


def fit(tmp_path: Path, *extra: str):
    return run_cli(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run"), *extra])


def test_fit_writes_run_directory(tmp_path):
    cli = fit(tmp_path)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert cli.trainer.global_step == 3
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["backbone"]["embed_dim"] == 32
    assert any(k.startswith("backbone.blocks.0.attn.qkv") for k in ckpt["state_dict"])
    assert "train/loss" in (run / "metrics.csv").read_text()


def test_refuses_to_overwrite_a_run_and_resumes_with_last(tmp_path):
    assert fit(tmp_path, "--ckpt_path", "last").trainer.global_step == 3, "last with nothing to resume starts fresh"
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        fit(tmp_path)
    cli = fit(tmp_path, "--ckpt_path", "last", "--trainer.max_steps", "5")
    assert cli.trainer.global_step == 5
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4], "metrics of the first part survive the resume"
    # the longer run's schedule applies: at step 3 the 3-step cosine had ended (lr 0), the 5-step one has not
    assert float(rows[3]["train/lr"]) > 1e-5


def test_a_moved_run_directory_resumes_into_its_own_last_ckpt(tmp_path):
    """Regression: after `mv runs/A runs/B`, resuming in B wrote last-v1.ckpt and left last.ckpt, which every
    documented command evaluates, at the old step. A run directory's files do not depend on where it was made."""
    fit(tmp_path)
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    cli = run_cli(["fit", "--config", TINY, "--trainer.default_root_dir", str(moved), "--ckpt_path", "last",
                   "--trainer.max_steps", "5"])  # fmt: skip
    assert cli.trainer.global_step == 5
    checkpoints = moved / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("last*")) == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 5
    assert not (tmp_path / "run").exists(), "nothing is written where the run used to be"


def test_bf16_mixed_precision_runs(tmp_path):
    cli = fit(tmp_path, "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2")
    assert cli.trainer.global_step == 2
    assert torch.isfinite(torch.tensor(cli.trainer.callback_metrics["train/loss"].item()))


def test_lr_scales_with_global_batch(tmp_path):
    cli = fit(tmp_path, "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "1")
    # base_lr 1e-3 * (16 images x 1 device x 2 accumulation) / 256
    assert cli.model.effective_lr() == pytest.approx(1e-3 * 32 / 256)


def test_print_config_lists_method_settings():
    out = sslvit("fit", "--config", TINY, "--print_config")
    assert out.returncode == 0, out.stderr
    for key in (
        "class_path: sslvit.methods.MAE",
        "mask_ratio: 0.75",
        "norm_pix_loss: true",
        "base_lr:",
        "dataset: digits",
    ):
        assert key in out.stdout, key


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.init_args.mask_ratio", "1.5"], "model.mask_ratio must be in the open interval (0, 1), got 1.5"),
        (
            ["--model.init_args.backbone.img_size", "18"],
            "backbone.img_size=18 is not divisible by backbone.patch_size=4",
        ),
        (["--data.image_size", "32"], "data.image_size=32 but the model expects 16px"),
        (
            ["--model.init_args.decoder_num_heads", "3"],
            "decoder_embed_dim=16 is not divisible by model.decoder_num_heads=3",
        ),
        (["--data.dataset", "imagefolder", "--data.root", "/nonexistent"], "/nonexistent/train does not exist"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    argv = ["sslvit", "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), *args]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sslvit: error: ") and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "checkpoints").exists(), "nothing may be written for a bad config"


def test_fit_with_plain_dataloaders_scales_lr_from_their_batch_size(tiny_vit):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from sslvit.methods.mae import MAE

    model = MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, base_lr=1e-3)
    loader = DataLoader(TensorDataset(torch.randn(24, 3, 16, 16), torch.zeros(24)), batch_size=8)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, loader)
    assert trainer.global_step == 2 and model.effective_lr() == pytest.approx(1e-3 * 8 / 256)


def test_the_data_seed_follows_the_runs_seed_unless_set():
    """Runs with other seeds see other data orders and per-sample keys (crops, masks, drop path), not only
    another initialisation; data.seed set explicitly wins."""
    runs = [["--seed_everything", "3"], ["--seed_everything", "4"], ["--seed_everything", "4", "--data.seed", "7"]]
    seeds = [run_cli(["--config", TINY, *extra], run=False).datamodule.hparams.seed for extra in runs]
    assert seeds == [3, 4, 7]
