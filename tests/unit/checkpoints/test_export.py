"""Export for timm from checkpoints of every method: only the encoder, at the evaluation size, the same features.

Checkpoints hold the real state dicts of MAE, BEiT and CPC (their decoders, heads, tokenizer buffers and
context networks under their own names) with weights moved away from the initialisation, and
architectures away from the defaults; timm must then compute bit-identical features.
"""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from sslvit.checkpoints import load_backbone
from sslvit.checkpoints.export import export_checkpoint, timm_from_export, timm_max_difference
from sslvit.errors import ConfigError
from sslvit.methods import CPC, MAE, BEiT, SSLMethod
from sslvit.nn.backbone import ViTConfig

TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4)


def build(method: str, backbone: dict) -> tuple[SSLMethod, int]:
    """A real method on ``backbone`` and the side of the images it is evaluated on."""
    if method == "MAE":
        return MAE(backbone=backbone, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2), backbone["img_size"]
    if method == "BEiT":
        return BEiT(backbone=backbone, codebook={"vocab_size": 8}), backbone["img_size"]
    # CPC trains its encoder on 8 px patches of 16 px images and is evaluated on whole images
    return CPC(
        backbone={**backbone, "img_size": 8},
        image_size=16,
        context_dim=32,
        context_depth=1,
        context_heads=2,
        prediction_steps=1,
    ), 16


def save_checkpoint(path, model: SSLMethod, image_size: int, **data) -> None:
    """What Lightning writes for a run of ``model``: its state dict, hyper-parameters and data settings."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the initialisation: a copying mistake would show
    hparams = {**dict(model.hparams), "_class_path": f"sslvit.methods.{type(model).__name__}"}
    data = {"image_size": image_size, **data}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "datamodule_hyper_parameters": data}, path
    )


@pytest.mark.parametrize("method", ["MAE", "BEiT", "CPC"])
@pytest.mark.parametrize(
    "overrides,pooling",
    [
        ({}, "cls"),
        ({"mlp_ratio": 2.0, "qkv_bias": False}, "cls"),
        ({"layer_scale_init": 0.1}, "mean"),
        ({"in_chans": 1, "num_heads": 2}, "mean"),
    ],
    ids=["default", "mlp2-noqkvbias", "layerscale-mean", "1channel-mean"],
)
def test_export_keeps_only_the_encoder_and_timm_computes_the_same_features(tmp_path, method, overrides, pooling):
    model, image_size = build(method, {**TINY, **overrides})
    mean, std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    save_checkpoint(tmp_path / "m.ckpt", model, image_size, mean=mean, std=std, eval_crop_fraction=0.875)
    backbone, info = export_checkpoint(tmp_path / "m.ckpt", tmp_path / "out", pooling=pooling)
    assert info.image_size == image_size and info.method == f"sslvit.methods.{method}"
    ours = model.backbone.eval()
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert set(weights) == set(ours.state_dict()), "decoders, heads, tokenizers and context networks stay behind"
    assert weights["pos_embed"].shape == (1, 1 + (image_size // 4) ** 2, 64)
    pretrained = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert pretrained["input_size"] == [ours.config.in_chans, image_size, image_size]
    assert pretrained["crop_pct"] == 0.875 and pretrained["mean"] == mean and pretrained["std"] == std

    images = torch.randn(3, ours.config.in_chans, image_size, image_size)
    for theirs in (
        timm_from_export(tmp_path / "out"),
        timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True),
    ):
        with torch.no_grad():
            assert torch.equal(theirs.eval().forward_features(images), ours.forward_features(images))
            assert torch.equal(theirs(images), ours(images, pooling=pooling))
    assert timm_max_difference(backbone, timm_from_export(tmp_path / "out"), image_size, pooling) == 0.0
    again, again_info = load_backbone(tmp_path / "out")  # and back into sslvit
    assert again_info.image_size == image_size and again_info.eval_crop_fraction == 0.875
    with torch.no_grad():
        assert torch.equal(again.forward_features(images), ours.forward_features(images))


def test_export_at_another_size_and_bad_sizes(tmp_path):
    model, _ = build("MAE", TINY)
    save_checkpoint(tmp_path / "m.ckpt", model, 16)
    export_checkpoint(tmp_path / "m.ckpt", tmp_path / "out", image_size=24)
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(timm_from_export(tmp_path / "out")(images), model.backbone.eval()(images))
    with pytest.raises(ConfigError, match="not a multiple of the patch size 4"):
        export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bad", image_size=30)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="pooling must be 'cls' or 'mean'"):
        ViTConfig(**TINY).timm_kwargs("max")


def test_another_export_is_replaced_only_with_overwrite_and_other_files_never(tmp_path):
    mae, _ = build("MAE", TINY)
    save_checkpoint(tmp_path / "mae.ckpt", mae, 16)
    beit, _ = build("BEiT", {**TINY, "depth": 1})
    save_checkpoint(tmp_path / "beit.ckpt", beit, 16)
    out = tmp_path / "exported"
    export_checkpoint(tmp_path / "mae.ckpt", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match=r"already holds files \(config.json, model.safetensors\); pass --overw"):
        export_checkpoint(tmp_path / "beit.ckpt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the MAE export is untouched"

    export_checkpoint(tmp_path / "beit.ckpt", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["sslvit_backbone"]["depth"] == 1, "the BEiT encoder now"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beit.ckpt", "exported", "mae.ckpt"], "no temporary left"

    (out / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"not part of an earlier export \(README.md\)"):
        export_checkpoint(tmp_path / "mae.ckpt", out, overwrite=True)
    assert (out / "README.md").read_text() == "my notes"
