"""Every tool that takes --checkpoint reads weights trained elsewhere: timm files and folders, official MAE."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models import create_model
from timm.models._hub import save_for_hf

from conftest import load_script, write_image_folder
from sslvit.methods.mae import MAE

knn_eval, linear_probe = load_script("tools/knn_eval.py"), load_script("tools/linear_probe.py")
visualize_mae, visualize_features = load_script("tools/visualize_mae.py"), load_script("tools/visualize_features.py")
SIZES = dict(img_size=16, patch_size=4, embed_dim=48, depth=1, num_heads=3)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    root = tmp_path_factory.mktemp("outside")
    torch.manual_seed(0)
    vit = create_model("vit_tiny_patch16_224", num_classes=0, **SIZES).eval()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit.safetensors"))
    save_for_hf(vit, str(root / "hub"), model_args=SIZES, safe_serialization=True)
    mae = MAE(backbone=dict(arch="vit_tiny", img_size=16, patch_size=4, depth=1), decoder_embed_dim=32, decoder_depth=1)
    torch.save({"model": {k.removeprefix("backbone."): v for k, v in mae.state_dict().items()}}, root / "mae.pth")
    write_image_folder(root / "images", classes=3, per_class=20)
    return root


def data(root, *extra):
    return ["--data-root", str(root / "images"), "--num-workers", "0", "--no-cache", *extra]


def test_knn_and_probe_of_timm_weights(outside, capsys):
    record = knn_eval.main(
        ["--checkpoint", str(outside / "vit.safetensors"), "--num-heads", "3", "--ks", "5", "--k", "5"] + data(outside)
    )
    assert record["source"] == "timm" and record["feature_dim"] == 48 and record["num_train"] == 60
    probe = linear_probe.main(["--checkpoint", str(outside / "hub"), "--epochs", "2", "--lrs", "1"] + data(outside))
    assert probe["source"] == "timm-hub" and probe["top1"] > 0
    assert "checkpoint: " in capsys.readouterr().out


def test_figures_of_official_mae_weights(outside, tmp_path, capsys):
    images = ["--checkpoint", str(outside / "mae.pth"), "--data-root", str(outside / "images"), "--num-images", "2"]
    visualize_mae.main([*images, "--decoder-num-heads", "1", "--output", str(tmp_path / "recon.png")])
    visualize_features.main([*images, "--output", str(tmp_path / "maps.png")])
    assert (tmp_path / "recon.png").stat().st_size > 0 and (tmp_path / "maps.png").stat().st_size > 0
    assert "loss on hidden patches" in capsys.readouterr().out


def test_a_file_of_no_known_format_is_one_line(outside, tmp_path, capsys):
    torch.save({"encoder.w": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(SystemExit) as exit_info:
        knn_eval.main(["--checkpoint", str(tmp_path / "other.pth")] + data(outside))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "matches none of the formats sslvit reads" in err and "Traceback" not in err
