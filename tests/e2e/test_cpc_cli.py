"""CPC through `sslvit fit`: checkpoint, its backbone on whole images, DDP with negatives from all processes."""

import sys

import pytest
import torch

from conftest import TINY_CONFIGS, load_script, read_run, sslvit
from sslvit.checkpoints import load_backbone
from sslvit.cli import main, run_cli
from sslvit.data import DigitsDataset, SSLDataModule
from sslvit.eval import FeatureCache, encode
from sslvit.methods import load_method

TINY = TINY_CONFIGS["cpc"]


def test_fit_writes_a_checkpoint_whose_backbone_runs_on_whole_images(tmp_path):
    run = ["--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.val_check_interval", "2"]
    cli = run_cli(["fit", "--config", TINY, *run])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file() and cli.trainer.global_step == 2
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    for key in ("train/loss", "train/accuracy", "train/accuracy_k2", "val/accuracy", "knn/top1"):
        assert key in metrics, key

    backbone, info = load_backbone(last)
    assert info.method == "sslvit.methods.CPC" and info.image_size == 16, "evaluate on whole 16 px images"
    assert backbone.config.img_size == 4, "the backbone was trained on 4 px patches"
    images = torch.randn(3, 3, info.image_size, info.image_size)
    with torch.no_grad():
        tokens = backbone.forward_features(images)
        assert tokens.shape == (3, 1 + 8 * 8, 32), "an 8x8 token grid with regenerated positions"
        for pooling in ("cls", "mean"):
            features = backbone(images, pooling=pooling)
            assert features.shape == (3, 32) and torch.isfinite(features).all()
        trained = cli.model.backbone.eval()
        assert torch.equal(backbone(images, pooling="mean"), trained(images, pooling="mean"))


def test_wrong_data_image_size_is_one_clear_line(tmp_path, monkeypatch, capsys):
    argv = ["sslvit", "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--data.image_size", "4"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        main()
    assert "data.image_size=4 but the model expects 16px images" in capsys.readouterr().err


@pytest.mark.slow  # two training runs in fresh processes
def test_two_ddp_processes_train_like_one_process_with_negatives_from_both(tmp_path):
    """Each process holds half of the global batch; its predictions are scored against the latents of
    both (gathered with gradients), so losses and weights equal those of one process on the whole batch.
    Without the gather each process would see half the candidates and the loss would differ."""
    common = ["--data.train_subset", "32", "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1"]
    common += ["--trainer.accelerator", "cpu", "--data.num_workers", "0"]
    single = fit_in_subprocess(tmp_path / "single", *common, "--trainer.devices", "1", "--data.batch_size", "8")
    ddp = fit_in_subprocess(
        tmp_path / "ddp", *common, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "4"
    )
    assert len(single["losses"]) == len(ddp["losses"]) == 4
    assert torch.allclose(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-5)
    for key, value in single["state_dict"].items():
        assert torch.allclose(ddp["state_dict"][key], value, atol=2e-5), key


def fit_in_subprocess(run_dir, *args: str) -> dict:
    out = sslvit("fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *args)
    assert out.returncode == 0, out.stderr[-4000:]
    run = read_run(run_dir)
    return {"losses": run["losses"], "state_dict": run["ckpt"]["state_dict"]}


def test_tools_use_cpcs_own_features_by_default(tmp_path):
    """CPC's encoder learns on single patches: its native feature is the mean of the patch-grid latents."""
    run_cli(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run")])
    knn_eval = load_script("tools/knn_eval.py")
    args = ["--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--ks", "5", "--k", "5"]
    args += ["--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    native, mean = knn_eval.main(args), knn_eval.main([*args, "--features", "mean"])
    assert (native["features"], native["pooling"], mean["pooling"]) == ("native", "patch_grid", "mean")
    assert native["per_k"] != mean["per_k"] and native["num_train"] == 1497
    method, _ = load_method(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cached = FeatureCache(tmp_path / "cache")
    transform = SSLDataModule(dataset="digits", image_size=16).eval_transform()
    images = torch.stack([DigitsDataset("val", transform)[i][0] for i in range(4)])
    assert torch.equal(encode(method, images, "native", "fp32"), method.eval().grid_features(images))
    assert len(list(cached.directory.glob("*.pt"))) == 4, "native and mean features are cached apart"
