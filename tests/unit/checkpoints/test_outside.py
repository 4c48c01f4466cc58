"""Weights trained elsewhere: small checkpoints in each outside format, with the official key names, give
the features of the model they came from, bit for bit; a file of no known format is one clear error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models import create_model
from timm.models._hub import save_for_hf
from timm.models.beit import Beit

from sslvit.checkpoints import load_backbone
from sslvit.errors import CheckpointError
from sslvit.methods.mae import MAE

IMAGES = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
# A ViT-Tiny-named model at small sizes: 3 heads (the name's), 48 wide, 2 blocks, 16 px images, 4 px patches.
TIMM_SIZES = dict(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=3)


def timm_vit(**overrides) -> torch.nn.Module:
    torch.manual_seed(1)
    model = create_model("vit_tiny_patch16_224", num_classes=5, **{**TIMM_SIZES, **overrides}).eval()
    with torch.no_grad():  # a learned table that is not sin-cos, and non-zero biases everywhere
        for name, param in model.named_parameters():
            if name.endswith("bias") or name == "pos_embed":
                param.normal_(0, 0.1)
    return model


def features(model: torch.nn.Module, images: torch.Tensor = IMAGES) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(images)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_state_dict_gives_timms_features(tmp_path, suffix):
    source = timm_vit()
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    backbone, info = load_backbone(path, num_heads=3)
    assert torch.equal(features(backbone), features(source))
    assert info.source == "timm" and info.dropped == {"classifier head": 2}
    config = backbone.config
    assert (config.img_size, config.patch_size, config.dims, config.pos_embed) == (16, 4, (48, 2, 3), "learned")
    # Another image size: the learned table is resized as timm resizes it.
    dynamic = create_model("vit_tiny_patch16_224", num_classes=5, dynamic_img_size=True, **TIMM_SIZES).eval()
    dynamic.load_state_dict(source.state_dict())
    larger = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(features(backbone, larger), features(dynamic, larger), atol=1e-5)
    # Without --arch, a width of no preset needs the heads; a wrong head count is a shape-free error too.
    with pytest.raises(CheckpointError, match="do not record the number of attention heads; pass --num-heads"):
        load_backbone(path)
    assert torch.equal(features(load_backbone(path, num_heads=3)[0]), features(source))
    with pytest.raises(CheckpointError, match="neither an sslvit preset .* nor a timm model name"):
        load_backbone(path, arch="vit_imaginary")
    # An arch is applied or refused: one whose width, depth or patch size is not the weights' is refused.
    with pytest.raises(CheckpointError, match="--arch vit_tiny_patch16_224 is 192 wide, 12 blocks deep with 16px"):
        load_backbone(path, arch="vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="--num-heads 5 does not divide the weights' width 48"):
        load_backbone(path, num_heads=5)


def test_a_timm_arch_gives_its_heads_and_preprocessing_and_cannot_be_another_size(tmp_path):
    """``--arch`` of the model the weights come from sets what shapes do not say (heads, mean/std); the arch of a
    model of another size is refused, never run with that arch's heads (vit_small's 6 on 192-wide weights)."""
    source = timm_vit(img_size=32, patch_size=16, embed_dim=192, depth=12)
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    backbone, info = load_backbone(tmp_path / "tiny.pth", arch="vit_tiny_patch16_224")
    assert backbone.config.dims == (192, 12, 3) and info.timm_arch == "vit_tiny_patch16_224"
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(features(backbone, images), features(source, images))
    with pytest.raises(CheckpointError, match="--arch vit_small_patch16_224 is 384 wide.* holds 192 wide"):
        load_backbone(tmp_path / "tiny.pth", arch="vit_small_patch16_224")
    assert load_backbone(tmp_path / "tiny.pth", num_heads=6)[0].config.dims == (192, 12, 6)  # heads alone: applied


def test_timm_hub_folder(tmp_path):
    source = timm_vit()
    save_for_hf(source, str(tmp_path / "hub"), model_args=TIMM_SIZES, safe_serialization=True)
    backbone, info = load_backbone(tmp_path / "hub")
    assert torch.equal(features(backbone), features(source))
    assert info.source == "timm-hub" and info.timm_arch == "vit_tiny_patch16_224"
    assert info.image_size == 16 and len(info.mean) == 3


def test_timm_models_sslvit_cannot_run_are_refused(tmp_path):
    source = timm_vit(global_pool="avg", fc_norm=True)
    torch.save(source.state_dict(), tmp_path / "fc_norm.pth")
    with pytest.raises(CheckpointError, match="unexpected keys .*fc_norm.bias, fc_norm.weight"):
        load_backbone(tmp_path / "fc_norm.pth", num_heads=3)
    with pytest.raises(CheckpointError, match="vit_base_patch16_clip_224 cannot be run by sslvit's ViT: .*norm_pre"):
        load_backbone(tmp_path / "fc_norm.pth", arch="vit_base_patch16_clip_224")


def official_mae_state(model: MAE) -> dict[str, torch.Tensor]:
    """facebookresearch/mae's key layout: encoder keys at the top, decoder keys as they are."""
    return {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}


def tiny_mae() -> MAE:
    torch.manual_seed(2)
    backbone = dict(arch="vit_tiny", img_size=16, patch_size=4, depth=2)  # 192 wide: the preset says 3 heads
    return MAE(backbone=backbone, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2).eval()


def test_official_mae_with_decoder_features_and_reconstructions(tmp_path):
    source = tiny_mae()
    torch.save({"model": official_mae_state(source)}, tmp_path / "mae.pth")
    backbone, info = load_backbone(tmp_path / "mae.pth")
    assert torch.equal(features(backbone), features(source.backbone))
    assert info.source == "mae" and info.has_decoder and backbone.config.pos_embed == "sincos"
    model, _ = MAE.from_official(tmp_path / "mae.pth", decoder_num_heads=2)
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (loss, pred, mask), (ref_loss, ref_pred, ref_mask) = model(IMAGES, noise), source(IMAGES, noise)
    assert torch.equal(pred, ref_pred) and torch.equal(mask, ref_mask) and loss == ref_loss
    # The encoder-only release reads as timm key names; reconstructions then say what is missing.
    encoder = {k: v for k, v in official_mae_state(source).items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder}, tmp_path / "encoder.pth")
    assert torch.equal(features(load_backbone(tmp_path / "encoder.pth")[0]), features(source.backbone))
    with pytest.raises(CheckpointError, match="holds the MAE encoder only"):
        MAE.from_official(tmp_path / "encoder.pth")


def beit(**overrides) -> Beit:
    torch.manual_seed(3)
    settings = dict(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=0, init_values=0.1)
    settings.update(use_abs_pos_emb=True, use_rel_pos_bias=False, use_fc_norm=False)
    settings.update(overrides)
    model = Beit(**settings).eval()
    with torch.no_grad():  # q/v biases, layer scales and positions that a wrong mapping would not survive
        for name, param in model.named_parameters():
            if name.endswith(("q_bias", "v_bias", "gamma_1", "gamma_2", "pos_embed")):
                param.normal_(0, 0.2)
    return model


def test_beit_state_dict_maps_q_v_biases_and_layer_scales(tmp_path):
    source = beit()
    state = {**source.state_dict(), "mask_token": torch.zeros(1, 1, 48), "lm_head.weight": torch.zeros(16, 48)}
    torch.save({"model": state}, tmp_path / "beit.pth")
    backbone, info = load_backbone(tmp_path / "beit.pth", num_heads=3)
    assert torch.equal(features(backbone), features(source))
    assert info.source == "beit" and info.dropped == {"mask token": 1, "BEiT token head": 1}
    torch.save({"model": beit(use_abs_pos_emb=False, use_rel_pos_bias=True).state_dict()}, tmp_path / "rel.pth")
    with pytest.raises(CheckpointError, match="uses relative position biases .*absolute positions only"):
        load_backbone(tmp_path / "rel.pth")


def test_dino_teacher_checkpoint(tmp_path):
    source = timm_vit()
    state = {f"backbone.{k}": v for k, v in source.state_dict().items() if not k.startswith("head.")}
    state["head.last_layer.weight_g"] = torch.ones(7, 1)  # DINO's projection head, outside the backbone
    torch.save({"teacher": state, "epoch": 10}, tmp_path / "dino.pth")
    backbone, info = load_backbone(tmp_path / "dino.pth", num_heads=3)
    assert torch.equal(features(backbone), features(source))
    assert info.dropped == {"outside 'backbone.'": 1}


def test_files_of_no_format_and_mismatched_shapes_name_the_keys(tmp_path):
    torch.save({"encoder.w": torch.zeros(2), "proj": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"matches none of the formats sslvit reads .*\['encoder.w', 'proj'\]"):
        load_backbone(tmp_path / "other.pth")
    state = timm_vit().state_dict()
    state["blocks.1.attn.proj.weight"] = torch.zeros(48, 47)
    del state["blocks.0.norm2.bias"]
    torch.save(state, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(tmp_path / "shapes.pth", num_heads=3)
    message = str(err.value)
    assert "missing keys (1): blocks.0.norm2.bias" in message
    assert "blocks.1.attn.proj.weight: checkpoint (48, 47) vs model (48, 48)" in message
