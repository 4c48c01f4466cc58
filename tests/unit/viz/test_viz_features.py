"""Feature maps: CLS attention recomputed from the fused blocks, PCA colouring, the figure."""

import pytest
import torch
from PIL import Image

from sslvit.nn.backbone import VisionTransformer
from sslvit.viz.features import attention_overlay, encode_with_attention, features_figure, pca_rgb
from sslvit.viz.figure import GAP_PX, NOTE_LINE_PX, TITLE_PX, save_png


def test_cls_attention_reproduces_the_fused_block(tiny_vit):
    backbone = VisionTransformer(tiny_vit).eval()
    images = torch.randn(2, 3, 16, 16)
    maps = encode_with_attention(backbone, images)
    assert maps.grid == (4, 4) and maps.cls_attention.shape == (2, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(maps.tokens, backbone.forward_features(images)[:, 1:], atol=1e-6)
        # the CLS query's weights times the values, projected, is what the fused (SDPA) attention outputs
        patches, cls = backbone.patch_tokens(images)
        x = backbone.blocks[0](torch.cat([cls, patches], dim=1))
        last = backbone.blocks[-1]
        normed = last.norm1(x)
        fused = last.attn(normed)[:, 0]  # [N, D]
        n, t, d = normed.shape
        qkv = last.attn.qkv(normed).reshape(n, t, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
        cls_weight = 1.0 - maps.cls_attention.flatten(2).sum(-1)  # the rest of the softmax is on CLS itself
        weights = torch.cat([cls_weight.unsqueeze(-1), maps.cls_attention.flatten(2)], dim=-1)  # [N, heads, T]
        heads_out = (weights.unsqueeze(2) @ qkv[2]).squeeze(2)  # [N, heads, head_dim]
        assert torch.allclose(last.attn.proj(heads_out.reshape(n, d)), fused, atol=1e-5)
    assert torch.all(maps.cls_attention >= 0) and torch.all(cls_weight > 0)


def test_pca_gives_three_channels_in_unit_range():
    torch.manual_seed(0)
    tokens = torch.randn(5, 16, 32)
    rgb, explained = pca_rgb(tokens, (4, 4))
    assert rgb.shape == (5, 3, 4, 4) and rgb.dtype == torch.float32
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    for channel in range(3):  # each component is scaled over the whole batch to span [0, 1]
        assert rgb[:, channel].min() == 0.0 and rgb[:, channel].max() == 1.0
    assert torch.all(explained[:-1] >= explained[1:]) and 0 < explained.sum() <= 1
    again, _ = pca_rgb(tokens, (4, 4))
    assert torch.equal(rgb, again)


def test_pca_finds_the_dominant_direction():
    torch.manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(32), dim=0)
    strength = torch.linspace(-10, 10, 2 * 16).reshape(2, 16)  # one smooth ramp across the tokens
    tokens = strength[..., None] * direction + 0.1 * torch.randn(2, 16, 32)
    rgb, explained = pca_rgb(tokens, (4, 4), clip_quantile=0.0)
    assert explained[0] > 0.95
    red = rgb[:, 0].flatten()
    corr = torch.corrcoef(torch.stack([red, strength.flatten()]))[0, 1]
    assert abs(corr) > 0.99
    flipped, _ = pca_rgb(-tokens, (4, 4), clip_quantile=0.0)
    # the basis is fixed by the loadings (largest one positive), so negated tokens get the opposite colour
    assert torch.allclose(flipped[:, 0], 1 - rgb[:, 0], atol=1e-5)


def test_pca_rejects_bad_input():
    with pytest.raises(ValueError, match="do not fill"):
        pca_rgb(torch.randn(1, 15, 8), (4, 4))
    with pytest.raises(ValueError, match="at least 3 tokens"):
        pca_rgb(torch.randn(1, 4, 2), (2, 2))


def test_attention_overlay_highlights_the_attended_patch():
    pixels = torch.full((1, 3, 8, 8), 0.5)
    attention = torch.zeros(1, 2, 2)
    attention[0, 1, 0] = 1.0  # bottom-left patch
    overlay = attention_overlay(pixels, attention)
    assert overlay.shape == (1, 3, 8, 8) and overlay.min() >= 0 and overlay.max() <= 1
    hot, cold = overlay[0, :, 4:, :4], overlay[0, :, :4, 4:]
    assert hot.mean() > cold.mean() + 0.3 and torch.equal(hot, hot[:, :1, :1].expand_as(hot))


def test_features_figure_size(tiny_vit, tmp_path):
    backbone = VisionTransformer(tiny_vit).eval()
    path = save_png(features_figure(backbone, torch.randn(3, 3, 16, 16), panel_px=64), tmp_path / "f.png")
    width, height = Image.open(path).size
    columns = 3 + 4  # image, PCA, mean attention, 4 heads
    assert width == columns * (64 + GAP_PX) + GAP_PX
    note = height - (TITLE_PX + 3 * (64 + GAP_PX))
    assert note >= NOTE_LINE_PX and note % NOTE_LINE_PX == 0
    path = save_png(features_figure(backbone, torch.randn(3, 3, 16, 16), panel_px=64, max_heads=1), tmp_path / "g.png")
    assert Image.open(path).size[0] == 4 * (64 + GAP_PX) + GAP_PX
