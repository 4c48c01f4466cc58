import pytest
import timm
import torch

from sslvit.nn.backbone import PRESETS, TIMM_ARCH, VisionTransformer, ViTConfig
from sslvit.nn.masking import random_masking
from sslvit.nn.pos_embed import sincos_pos_embed_2d


def test_timm_parameter_names_and_round_trip(tiny_vit):
    model = VisionTransformer(tiny_vit).eval()
    keys = set(model.state_dict())
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "norm.weight"):
        assert name in keys
    reference = timm.create_model(TIMM_ARCH[tiny_vit.arch], pretrained=False, **tiny_vit.timm_kwargs()).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(reference.forward_features(images), model.forward_features(images), atol=1e-5)
        assert torch.allclose(reference(images), model(images, "cls"), atol=1e-5)
    # and back: timm's weights load into ours
    model2 = VisionTransformer(tiny_vit)
    model2.load_state_dict(reference.state_dict(), strict=True)


def test_layer_scale_keys_match_timm():
    cfg = ViTConfig(arch="vit_tiny", img_size=8, patch_size=4, embed_dim=32, depth=1, num_heads=2, layer_scale_init=0.1)
    model = VisionTransformer(cfg)
    reference = timm.create_model(TIMM_ARCH["vit_tiny"], pretrained=False, **cfg.timm_kwargs())
    reference.load_state_dict(model.state_dict(), strict=True)
    assert torch.allclose(model.blocks[0].ls1.gamma, torch.full((32,), 0.1))


@pytest.mark.parametrize("name,width", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768), ("vit_large", 1024)])
def test_presets(name, width):
    cfg = ViTConfig(arch=name)
    assert cfg.dims == PRESETS[name] and cfg.dims[0] == width
    assert ViTConfig(arch=name, depth=2, embed_dim=64, num_heads=2).dims == (64, 2, 2)


def test_fixed_positions_are_sincos_and_not_trained(tiny_vit):
    model = VisionTransformer(tiny_vit)
    assert torch.equal(model.pos_embed[0], sincos_pos_embed_2d(64, 4, cls_token=True))
    assert "pos_embed" not in dict(model.named_parameters())


def test_visible_encoding_sees_only_kept_patches(tiny_vit):
    model = VisionTransformer(tiny_vit).eval()
    images = torch.randn(2, 3, 16, 16)
    m = random_masking(2, 16, 0.75)
    out = model.forward_visible(images, m.ids_keep)
    assert out.shape == (2, 1 + 4, 64)
    # Scribbling over every masked patch changes nothing: the encoder never sees them.
    changed = images.clone()
    pixel_mask = m.mask.reshape(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).bool().expand_as(images)
    changed[pixel_mask] = torch.randn(int(pixel_mask.sum()))
    assert torch.equal(model.forward_visible(changed, m.ids_keep), out)
    # ...while changing a visible patch does change the output.
    changed[~pixel_mask] += 1.0
    assert not torch.allclose(model.forward_visible(changed, m.ids_keep), out)


def test_embedding_only_kept_patches_equals_the_convolution_at_those_patches(tiny_vit):
    """The MAE path embeds kept patches with a matmul; it must be timm's conv, read at those patches."""
    model = VisionTransformer(tiny_vit)
    images = torch.randn(3, 3, 16, 16)
    ids = torch.stack([torch.randperm(16)[:5] for _ in range(3)])  # any order, different per sample
    full = model.patch_embed(images)  # [N, L, D] by the convolution
    expected = torch.stack([full[n, ids[n]] for n in range(3)])
    assert torch.allclose(model.embed_patches(images, ids), expected, atol=1e-6)
    assert torch.equal(model.embed_patches(images), full)


def test_visible_encoding_equals_full_encoding_of_the_same_tokens(tiny_vit):
    """With every patch kept (in grid order), the subset path is the full path."""
    model = VisionTransformer(tiny_vit).eval()
    images = torch.randn(2, 3, 16, 16)
    all_ids = torch.arange(16).expand(2, 16)
    assert torch.allclose(model.forward_visible(images, all_ids), model.forward_features(images), atol=1e-6)


def test_mask_token_replaces_masked_patches(tiny_vit):
    model = VisionTransformer(tiny_vit).eval()
    token = torch.randn(1, 1, 64)
    images = torch.randn(2, 3, 16, 16)
    mask = random_masking(2, 16, 0.5).mask
    out = model.forward_masked(images, mask, token)
    assert out.shape == (2, 17, 64)
    pixel_mask = mask.reshape(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).bool().expand_as(images)
    changed = images.clone()
    changed[pixel_mask] = 5.0
    assert torch.allclose(model.forward_masked(changed, mask, token), out, atol=1e-6)
    assert not torch.allclose(model.forward_masked(images, torch.zeros_like(mask), token), out)


def test_pooling_and_intermediate_layers(tiny_vit):
    model = VisionTransformer(tiny_vit).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens = model.forward_features(images)
    assert torch.equal(model(images, "cls"), tokens[:, 0])
    assert torch.allclose(model(images, "mean"), tokens[:, 1:].mean(1))
    last = model.get_intermediate_layers(images, 2)
    assert len(last) == 2 and torch.allclose(last[-1], tokens, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        model(images, "max")


def test_other_image_size_uses_regenerated_positions(tiny_vit):
    model = VisionTransformer(tiny_vit).eval()
    big = torch.randn(1, 3, 24, 32)
    assert model.forward_features(big).shape == (1, 1 + 6 * 8, 64)
    assert torch.equal(model.position_table((6, 8))[0], sincos_pos_embed_2d(64, (6, 8), cls_token=True))


def test_gradient_checkpointing_same_values_and_grads(tiny_vit):
    model = VisionTransformer(tiny_vit)
    images = torch.randn(2, 3, 16, 16)
    model(images).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(images).sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_bad_configs():
    with pytest.raises(ValueError, match="not divisible by backbone.patch_size"):
        ViTConfig(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="unknown"):
        ViTConfig(arch="vit_gigantic")
    with pytest.raises(ValueError, match="num_heads"):
        ViTConfig(arch="vit_tiny", num_heads=5)
    with pytest.raises(ValueError, match="unknown backbone settings"):
        ViTConfig.from_dict({"arch": "vit_tiny", "widht": 3})


def test_image_not_divisible_at_runtime(tiny_vit):
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        VisionTransformer(tiny_vit)(torch.randn(1, 3, 18, 16))
