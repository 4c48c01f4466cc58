"""What the encoder's features look like: PCA of patch tokens as RGB, and CLS attention of the last block.

Works for the backbone of every method. Shapes: images [N, C, H, W]; a grid of h x w = L patches;
D channels; ``heads`` attention heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.nn.backbone import VisionTransformer
from sslvit.viz.figure import image_grid, to_pixels


@dataclass
class FeatureMaps:
    """Encoder outputs for a batch: final (normed) patch tokens and the last block's CLS attention."""

    tokens: torch.Tensor  # [N, L, D] patch tokens after the final norm
    cls_attention: torch.Tensor  # [N, heads, h, w] softmax weights of the CLS query over the patches
    grid: tuple[int, int]  # (h, w)


@torch.no_grad()
def encode_with_attention(backbone: VisionTransformer, images: torch.Tensor) -> FeatureMaps:
    """One pass through ``backbone`` that also computes the last block's attention of the CLS token.

    The blocks use fused attention, which never forms the weights; they are recomputed here from
    the last block's ``attn.qkv`` applied to its normed input (``norm1``), the same way timm's
    unfused path does: ``softmax(q_cls k^T * scale)`` per head.
    """
    grid = backbone.grid_of(images)
    patches, cls = backbone.patch_tokens(images)
    x = torch.cat([cls, patches], dim=1)  # [N, T = 1 + L, D]
    *blocks, last = backbone.blocks
    for block in blocks:
        x = block(x)
    attn = last.attn
    n, t, _ = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # [N, heads, T, head_dim]
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [N, heads, 1, T]
    tokens = backbone.norm(last(x))[:, 1:]
    cls_attention = weights[:, :, 0, 1:].reshape(n, attn.num_heads, *grid)
    return FeatureMaps(tokens=tokens, cls_attention=cls_attention, grid=grid)


def pca_rgb(
    tokens: torch.Tensor, grid: tuple[int, int], clip_quantile: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project patch tokens on their first three principal components, fitted over the whole batch.

    Args:
        tokens: [N, L, D] patch tokens.
        grid: (h, w) with h * w = L.
        clip_quantile: each component is clipped to its [q, 1 - q] quantiles over the batch before
            it is scaled to [0, 1], so a few extreme tokens do not wash out the colours.
    Returns:
        (rgb [N, 3, h, w] in [0, 1], explained variance ratio [3] of the three components). A
        component's sign is fixed so that its largest-magnitude loading is positive (reproducible).
    """
    n, length, dim = tokens.shape
    if length != grid[0] * grid[1]:
        raise ValueError(f"{length} tokens do not fill a {grid[0]}x{grid[1]} grid")
    if min(n * length, dim) < 3:
        raise ValueError(f"PCA to three components needs at least 3 tokens of >= 3 channels, got {n * length}x{dim}")
    x = tokens.reshape(n * length, dim).double()
    x = x - x.mean(dim=0)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    components = vh[:3]  # [3, D]
    biggest = components.abs().argmax(dim=1)
    components = components * components.gather(1, biggest[:, None]).sign()
    projected = x @ components.T  # [N*L, 3]
    low = torch.quantile(projected, clip_quantile, dim=0)
    high = torch.quantile(projected, 1.0 - clip_quantile, dim=0)
    scaled = ((projected.clamp(low, high) - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
    explained = singular[:3].pow(2) / singular.pow(2).sum().clamp_min(1e-12)
    rgb = scaled.T.reshape(3, n, *grid).transpose(0, 1)
    return rgb.float().contiguous(), explained.float()


def attention_overlay(pixels: torch.Tensor, attention: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Heat maps over images: pixels [N, 3, H, W] in [0, 1], attention [N, h, w] -> [N, 3, H, W] in [0, 1].

    Each map is min-max scaled on its own, upsampled to the image with nearest-neighbour interpolation
    (one block per patch), coloured with ``inferno`` and blended over a grey version of the image.
    """
    n, h, w = attention.shape
    flat = attention.reshape(n, -1).float()
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    scaled = ((flat - low) / (high - low).clamp_min(1e-12)).reshape(n, 1, h, w)
    scaled = F.interpolate(scaled, size=pixels.shape[-2:], mode="nearest")[:, 0]  # [N, H, W]
    colours = torch.from_numpy(matplotlib.colormaps["inferno"](scaled.cpu().numpy())[..., :3]).float()
    colours = colours.permute(0, 3, 1, 2)  # [N, 3, H, W]
    grey = pixels.float().cpu().mean(dim=1, keepdim=True).expand_as(colours)
    return (alpha * colours + (1.0 - alpha) * grey).clamp(0.0, 1.0)


def features_figure(
    backbone: VisionTransformer,
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    panel_px: int = 96,
    max_heads: int | None = None,
) -> Figure:
    """One row per image: the image | PCA of its patch tokens as RGB | mean CLS attention | one map per head.

    ``images`` are normalized with ``mean``/``std``; ``max_heads`` limits the per-head columns.
    """
    maps = encode_with_attention(backbone, images)
    rgb, explained = pca_rgb(maps.tokens, maps.grid)
    pixels = to_pixels(images, mean, std).float().cpu()
    size = pixels.shape[-2:]
    heads = maps.cls_attention.shape[1] if max_heads is None else min(max_heads, maps.cls_attention.shape[1])
    pca = F.interpolate(rgb, size=size, mode="nearest")
    columns = [pixels, pca, attention_overlay(pixels, maps.cls_attention.mean(1))]
    columns += [attention_overlay(pixels, maps.cls_attention[:, i]) for i in range(heads)]
    titles = ["image", "PCA of patch\ntokens (RGB)", "CLS attention\nmean of heads"]
    titles += [f"CLS attention\nhead {i}" for i in range(heads)]
    h, w = maps.grid
    shown = "" if heads == maps.cls_attention.shape[1] else f" (first {heads} of {maps.cls_attention.shape[1]} heads)"
    note = (
        f"PCA fitted over all {rgb.shape[0] * h * w} patch tokens of these {rgb.shape[0]} images ({h}x{w} patches "
        f"each, final norm): components 1-3 -> R, G, B explain "
        f"{', '.join(f'{100 * v:.0f}%' for v in explained.tolist())} of the variance. Attention: softmax "
        f"weights of the CLS query over the patches in the last block{shown}, each map min-max scaled."
    )
    return image_grid(columns, titles, panel_px=panel_px, note=note)
