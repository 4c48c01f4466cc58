"""Export for timm from checkpoints of every method: only the encoder, at the evaluation size, same features.

BEiT and CPC are emulated by what the export relies on: the encoder stored as ``backbone.*`` with its
config in ``hyper_parameters["backbone"]``, next to method-specific heads that must stay behind.
"""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from sslvit.checkpoints import load_backbone
from sslvit.checkpoints.export import export_checkpoint, timm_from_export, timm_max_difference
from sslvit.errors import ConfigError
from sslvit.nn.backbone import VisionTransformer, ViTConfig


def method_checkpoint(path, config: ViTConfig, method: str, heads: dict, image_size: int, **data) -> VisionTransformer:
    """A Lightning-like checkpoint of ``method``: a trained-looking encoder plus ``heads``."""
    backbone = VisionTransformer(config)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the initialisation: a copying mistake would show
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()} | heads
    hparams = {"_class_path": f"sslvit.methods.{method}", "backbone": config.to_dict(), "lr": 1e-3}
    data = {"image_size": image_size, **data}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "datamodule_hyper_parameters": data}, path)
    return backbone.eval()


BEIT_HEADS = {"mask_token": torch.zeros(1, 1, 64), "lm_head.weight": torch.zeros(8, 64)}
CPC_HEADS = {"predictor.weight": torch.zeros(64, 64), "predictor.bias": torch.zeros(64)}


@pytest.mark.parametrize(
    "method,overrides,heads,image_size",
    [
        ("BEiT", {"layer_scale_init": 0.1}, BEIT_HEADS, 16),
        # CPC trains its encoder on 8px crops of 16px images and is evaluated on whole images
        ("CPC", {"img_size": 8}, CPC_HEADS, 16),
    ],
)
def test_export_keeps_only_the_encoder_at_its_evaluation_size(tiny_vit, tmp_path, method, overrides, heads, image_size):
    config = ViTConfig(**{**tiny_vit.to_dict(), **overrides})
    mean, std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    ours = method_checkpoint(tmp_path / "m.ckpt", config, method, heads, image_size, mean=mean, std=std,
                             eval_crop_fraction=0.875)  # fmt: skip
    backbone, info = export_checkpoint(tmp_path / "m.ckpt", tmp_path / "out")
    assert info["export_image_size"] == image_size and info["method"] == f"sslvit.methods.{method}"
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert set(weights) == set(ours.state_dict()), "heads and tokens of the method are not exported"
    assert weights["pos_embed"].shape == (1, 1 + (image_size // 4) ** 2, 64)
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    pretrained = config_json["pretrained_cfg"]
    assert pretrained["input_size"] == [3, image_size, image_size] and pretrained["crop_pct"] == 0.875
    assert pretrained["mean"] == mean and pretrained["std"] == std
    model = timm_from_export(tmp_path / "out")
    images = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        assert torch.allclose(model(images), ours(images), atol=1e-6)
        assert torch.allclose(model.forward_features(images), ours.forward_features(images), atol=1e-6)
    assert timm_max_difference(backbone, model, image_size) < 1e-6
    # the hub-format folder also loads by name, with the preprocessing it was trained with
    by_name = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(by_name(images), ours(images), atol=1e-6)
    data_config = timm.data.resolve_model_data_config(by_name)
    assert list(data_config["mean"]) == mean and data_config["input_size"] == (3, image_size, image_size)
    again, again_info = load_backbone(tmp_path / "out")
    assert again_info["image_size"] == image_size and again_info["eval_crop_fraction"] == 0.875
    with torch.no_grad():
        assert torch.allclose(again(images), ours(images), atol=1e-6)


def test_export_at_another_size_and_bad_sizes(tiny_vit, tmp_path):
    ours = method_checkpoint(tmp_path / "m.ckpt", tiny_vit, "MAE", {"decoder_pred.weight": torch.zeros(48, 32)}, 16)
    export_checkpoint(tmp_path / "m.ckpt", tmp_path / "out", image_size=24)
    model = timm_from_export(tmp_path / "out")
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model(images), ours(images), atol=1e-6)
    with pytest.raises(ConfigError, match="not a multiple of the patch size 4"):
        export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bad", image_size=30)
    assert not (tmp_path / "bad").exists()
