"""Fine-tuning end to end: tools/finetune.py on the offline digits, `sslvit fit` of FineTune, exact resume."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch

from conftest import REPO, load_script, sslvit
from sslvit.checkpoints import load_backbone
from sslvit.cli import main as sslvit_main
from sslvit.cli import run_cli
from sslvit.methods import MAE

finetune = load_script("tools/finetune.py")
CONFIG = str(REPO / "configs" / "finetune" / "quickstart.yaml")
# A 64-wide, 2-block ViT on 32 px digits with 8 px patches: fast enough to train for a few epochs here.
VIT = dict(arch="vit_tiny", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An MAE checkpoint as Lightning writes it (weights at initialisation: the test is about the fine-tuning)."""
    torch.manual_seed(123)  # not the seed of the runs: --random-init must not draw these same weights
    mae = MAE(backbone=VIT, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    hparams = {**dict(mae.hparams), "_class_path": "sslvit.methods.MAE"}
    path = tmp_path_factory.mktemp("pretrained") / "mae.ckpt"
    data = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    torch.save(
        {
            "state_dict": mae.state_dict(),
            "hyper_parameters": hparams,
            "global_step": 7,
            "datamodule_hyper_parameters": data,
        },
        path,
    )
    return path


def test_a_short_fine_tune_of_the_digits_is_far_above_chance(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    record = finetune.main([
        "--checkpoint", str(checkpoint), "--epochs", "8", "--batch-size", "32", "--num-workers", "0",
        "--run-dir", str(run), "--output", str(tmp_path / "ft.json"),
        # a higher rate and no mixup: a few hundred steps from an untrained encoder
        "--", "--model.init_args.base_lr=1.6e-2", "--model.init_args.mixup=0", "--model.init_args.cutmix=0", *QUIET,
    ])  # fmt: skip
    assert record["top1"] > 50, f"10 classes: chance is 10%, got {record['top1']:.1f}%"
    assert json.loads((tmp_path / "ft.json").read_text()) == json.loads(json.dumps(record))
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert record["best"]["top1"] == max(row["top1"] for row in record["history"]) >= record["top1"]
    assert (record["num_train"], record["num_val"], record["image_size"]) == (1497, 300, 32)
    assert record["method"] == "sslvit.methods.MAE" and record["pretrain_global_step"] == 7
    settings = record["settings"]
    assert settings["data"]["mean"] == [0.5, 0.5, 0.5], "the checkpoint's normalization"
    assert settings["model"]["init_args"]["weights"] == str(checkpoint)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["val/top1"]) for r in rows if r.get("val/top1")]
    assert logged == pytest.approx([h["top1"] for h in record["history"]], rel=1e-6)
    assert (run / "config.yaml").is_file()
    encoder, info = load_backbone(run / "checkpoints" / "last.ckpt")  # the fine-tuned encoder, e.g. for kNN
    tuned = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, tuned[f"backbone.{k}"]) for k, v in encoder.state_dict().items())
    assert info.method == "sslvit.eval.FineTune"
    out = capsys.readouterr().out
    assert "top-1   top-5" in out and f"final: top-1 {record['top1']:.2f}" in out


def test_random_init_keeps_the_architecture_only(checkpoint, tmp_path):
    common = ["--checkpoint", str(checkpoint), "--epochs", "1", "--num-workers", "0", "--", *QUIET]
    record = finetune.main(["--random-init", "--run-dir", str(tmp_path / "random"), *common])
    assert record["random_init"] and "--model.init_args.weights" in record["fit_arguments"]
    assert record["settings"]["model"]["init_args"]["weights"] is None
    trained = torch.load(tmp_path / "random" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    pretrained = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert trained["backbone.blocks.0.attn.qkv.weight"].shape == pretrained["backbone.blocks.0.attn.qkv.weight"].shape
    # one epoch at lr 2.5e-4 moves a weight by about 0.005 at most: these started elsewhere
    start = pretrained["backbone.blocks.0.attn.qkv.weight"]
    assert (trained["backbone.blocks.0.attn.qkv.weight"] - start).abs().mean() > 0.03


def test_fine_tunes_started_in_the_same_second_do_not_share_a_run_directory(checkpoint, tmp_path, monkeypatch):
    """Without --run-dir the run is named after the clock; a second run in the same second used to find the
    first's last.ckpt and refuse to start (or resume it)."""
    import sslvit.cli.run_dir as run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_dir.time, "strftime", lambda pattern: pattern.replace("%Y%m%d-%H%M%S", "same-second"))
    common = ["--checkpoint", str(checkpoint), "--epochs", "1", "--shots", "2", "--batch-size", "8",
              "--num-workers", "0", "--", *QUIET]  # fmt: skip
    first, second = finetune.main(common), finetune.main(["--random-init", *common])
    assert (first["run_dir"], second["run_dir"]) == ("runs/finetune-same-second", "runs/finetune-same-second-2")
    assert not first["random_init"] and second["random_init"] and second["history"]
    assert all((tmp_path / r["run_dir"] / "checkpoints" / "last.ckpt").is_file() for r in (first, second))


@pytest.mark.parametrize(("low_shot", "expected"), [(["--shots", "3"], 30), (["--train-fraction", "0.02"], 30)])
def test_low_shot_fine_tuning_trains_on_a_class_balanced_subset(checkpoint, tmp_path, low_shot, expected):
    common = ["--checkpoint", str(checkpoint), "--epochs", "1", "--num-workers", "0", "--batch-size", "16"]
    record = finetune.main([*common, *low_shot, "--run-dir", str(tmp_path / "few"), "--", *QUIET])
    assert record["num_train"] == expected and record["num_val"] == 300, "the subset trains, val stays whole"
    assert "--data.train_subset" in record["fit_arguments"]


def test_a_minutes_budget_ends_training_on_the_clock(checkpoint, tmp_path):
    record = finetune.main([
        "--checkpoint", str(checkpoint), "--minutes", "0.1", "--num-workers", "0", "--run-dir", str(tmp_path / "r"),
        "--", *QUIET,
    ])  # fmt: skip
    assert record["minutes"] == 0.1 and record["history"], "stopped on time, then validated"
    assert record["seconds"] < 6 + 60, "6 s of training, plus start-up and the final validation"
    assert record["settings"]["trainer"]["max_epochs"] == -1


FIT = [
    "fit", "--config", CONFIG, "--data.train_subset", "64", "--data.batch_size", "16", "--data.num_workers", "1",
    "--trainer.max_steps", "10", "--trainer.max_epochs", "-1", "--trainer.deterministic", "true",
    "--trainer.limit_val_batches", "1", "--checkpoint.last_every_n_steps", "2", *QUIET,
    "--model.init_args.backbone", json.dumps(VIT),
]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_fine_tune(checkpoint, tmp_path):
    # Mixup, RandAugment, random erasing (keyed), drop path (the global RNG) and the loader's position,
    # which warmup_epochs makes the optimizer setup load before the restore, all have to resume.
    fit = [*FIT, "--model.init_args.weights", str(checkpoint)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_cli([*fit, "--trainer.default_root_dir", str(reference)])  # one thread, as in the subprocesses
    kill = json.dumps([{"class_path": "faults.KillAtStep", "init_args": {"step": 7}}])
    out = sslvit(*fit, "--trainer.default_root_dir", str(killed), "--trainer.callbacks", kill)
    assert out.returncode == -9, out.stderr[-3000:]
    out = sslvit(*fit, "--trainer.default_root_dir", str(killed), "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (reference, killed))
    assert a["global_step"] == b["global_step"] == 10
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["finetune_history"] == b["finetune_history"] and len(a["finetune_history"]) == 2


def test_resuming_a_finished_fine_tune_says_so_and_changes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    finetune.main(["--checkpoint", str(checkpoint), "--epochs", "1", "--shots", "4", "--batch-size", "8",
                   "--num-workers", "0", "--run-dir", str(run), "--", *QUIET])  # fmt: skip
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = ["sslvit", "fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last"]  # as the tool's doc says
    monkeypatch.setattr(sys, "argv", argv)
    sslvit_main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sslvit: ")]
    assert len(lines) == 1 and lines[0].startswith(
        f"sslvit: nothing to train: the run in {run} already reached trainer.max_epochs=1 (epoch 1 done, step "
    ), lines
    assert lines[0].endswith("to train longer, resume with a larger --trainer.max_epochs")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
