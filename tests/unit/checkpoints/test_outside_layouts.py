"""Weights trained elsewhere, in the real key names and shapes of their official code (facebookresearch/mae's
``models_mae``/``models_vit``, timm's ViTs; recorded in ``tests/fixtures/outside_layouts.json``).

Every tensor gets its own values; after loading, the inferred architecture must be the source model's and
every encoder (and decoder) tensor must sit, unchanged, under the name it has in sslvit's ViT.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import REPO
from sslvit.checkpoints import load_backbone
from sslvit.errors import CheckpointError
from sslvit.methods.mae import MAE

FIXTURE = json.loads((REPO / "tests" / "fixtures" / "outside_layouts.json").read_text())
LAYOUTS, PREPROCESSING = FIXTURE["layouts"], FIXTURE["preprocessing"]
MAE_DECODER = ("decoder_", "mask_token")


def mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """[1, 1 + grid^2, dim]: MAE's fixed table, by its formula: a zero CLS row, then per position (row h,
    column w) sin(w f), cos(w f), sin(h f), cos(h f) for the dim / 4 frequencies f_i = 10000^(-i / (dim / 4))."""
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    h, w = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    w, h = w.reshape(-1, 1) * freq, h.reshape(-1, 1) * freq
    table = torch.cat([w.sin(), w.cos(), h.sin(), h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float().unsqueeze(0)


def tensors_of(layout: dict[str, list[int]], sincos: bool) -> dict[str, torch.Tensor]:
    """Random values of exactly the layout's names and shapes; MAE's position tables are its fixed sin-cos."""
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in layout.items()}
    if sincos:
        for name in ("pos_embed", "decoder_pos_embed"):
            if name in state:
                _, tokens, dim = state[name].shape
                state[name] = mae_sincos(dim, math.isqrt(tokens - 1))
    return state


def assert_every_tensor_in_place(loaded: dict[str, torch.Tensor], source: dict[str, torch.Tensor], prefix: str = ""):
    """Every source tensor sits unchanged under its own name (after ``prefix``) in the loaded state, and the
    loaded state holds nothing else."""
    assert sorted(loaded) == sorted(prefix + k for k in source)
    moved = [k for k in source if not torch.equal(loaded[prefix + k], source[k])]
    assert not moved, f"tensors that did not land unchanged under their own name: {moved[:5]}"


def encoder_part(state: dict[str, torch.Tensor], drop: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(drop)}


def architecture(config) -> tuple:
    return (
        config.dims,
        config.patch_size,
        config.img_size,
        config.mlp_ratio,
        config.qkv_bias,
        config.layer_scale_init,
        config.pos_embed,
    )


VIT_BASE_16 = ((768, 12, 12), 16, 224, 4.0, True, None)


def test_official_mae_vit_base_with_decoder(tmp_path):
    source = tensors_of(LAYOUTS["mae_vit_base_patch16_dec512d8b"], sincos=True)
    path = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": source}, path)  # the official files wrap the state dict in "model"

    backbone, info = load_backbone(path)
    assert architecture(backbone.config) == (*VIT_BASE_16, "sincos")
    decoder_keys = [k for k in source if k.startswith("decoder_")]
    assert (info.source, info.has_decoder, info.image_size) == ("mae", True, 224)
    assert info.dropped == {"MAE decoder": len(decoder_keys), "mask token": 1}
    assert_every_tensor_in_place(backbone.state_dict(), encoder_part(source, MAE_DECODER))

    model, _ = MAE.from_official(path)
    assert architecture(model.backbone_config) == (*VIT_BASE_16, "sincos")
    assert (len(model.decoder_blocks), model.decoder_embed.out_features) == (8, 512)
    assert model.decoder_blocks[0].attn.num_heads == 16, "the official decoder's heads (dec512d8b: 16)"
    assert model.decoder_pred.out_features == 16 * 16 * 3
    official = {(k if k.startswith(MAE_DECODER) else "backbone." + k): v for k, v in source.items()}
    assert_every_tensor_in_place(model.state_dict(), official)


def test_official_mae_encoder_only_pretrained_weights(tmp_path):
    source = tensors_of(LAYOUTS["mae_pretrain_vit_base"], sincos=True)
    torch.save({"model": source}, tmp_path / "mae_pretrain_vit_base.pth")
    backbone, info = load_backbone(tmp_path / "mae_pretrain_vit_base.pth")
    assert architecture(backbone.config) == (*VIT_BASE_16, "sincos")
    assert info.dropped == {} and not info.has_decoder
    assert_every_tensor_in_place(backbone.state_dict(), source)


def test_official_mae_fine_tuned_classifier_with_global_pooling_is_refused_naming_its_norms(tmp_path):
    """Its features are the mean patch token through fc_norm, which sslvit's ViT has no place for."""
    torch.save({"model": tensors_of(LAYOUTS["mae_finetuned_vit_base"], sincos=True)}, tmp_path / "finetuned.pth")
    with pytest.raises(CheckpointError, match=r"fc_norm\.bias, fc_norm\.weight") as err:
        load_backbone(tmp_path / "finetuned.pth")
    assert "norm.weight" in str(err.value)


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    """name -> (file, its tensors): each timm layout written once (a ViT-Base file is 350 MB)."""
    folder, files = tmp_path_factory.mktemp("timm"), {}

    def write(name: str):
        if name not in files:
            source = tensors_of(LAYOUTS[name], sincos=False)  # a learned position table
            torch.save(source, folder / f"{name}.pth")
            files[name] = (folder / f"{name}.pth", source)
        return files[name]

    return write


@pytest.mark.parametrize("with_arch", [True, False], ids=["arch", "no_arch"])
@pytest.mark.parametrize(
    "name,dims", [("vit_base_patch16_224", (768, 12, 12)), ("vit_small_patch16_224", (384, 12, 6))]
)
def test_timm_vit_state_dict(timm_files, name, dims, with_arch):
    path, source = timm_files(name)
    backbone, info = load_backbone(path, arch=name if with_arch else None)
    assert architecture(backbone.config) == (dims, 16, 224, 4.0, True, None, "learned")
    assert info.source == "timm" and info.dropped == {"classifier head": 2}
    assert_every_tensor_in_place(backbone.state_dict(), encoder_part(source, ("head.",)))
    if with_arch:  # the preprocessing of the named model's pretrained weights
        assert [list(info.mean), list(info.std)] == [PREPROCESSING[name]["mean"], PREPROCESSING[name]["std"]]
