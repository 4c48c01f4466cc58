"""Patches and masks: patchify / unpatchify, per-sample random and blockwise masking, token gathering.

Conventions used everywhere in sslvit:
- a patch grid of ``L = H/p * W/p`` patches in row-major order;
- a mask is ``[N, L]`` with 1 (or True) = masked (hidden from the encoder), 0 = visible;
- a patch vector is ``[p * p * C]`` in (row, column, channel) order, the layout of the official
  MAE code, so that its decoder weights predict the same pixels here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from sslvit.errors import ConfigError


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: [N, C, H, W] -> patches: [N, L, p*p*C]."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None, channels: int = 3
) -> torch.Tensor:
    """patches: [N, L, p*p*C] -> images: [N, C, H, W]; ``grid_size`` defaults to a square grid."""
    n, length, _ = patches.shape
    p = patch_size
    if grid_size is None:
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(f"{length} patches are not a square grid: pass grid_size=(rows, cols)")
        grid_size = (side, side)
    h, w = grid_size
    x = patches.reshape(n, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, h * p, w * p)


class Masking(NamedTuple):
    """Result of a masking draw for a batch of N samples with L patches, K of them kept."""

    mask: torch.Tensor  # [N, L] float, 1 = masked
    ids_keep: torch.Tensor  # [N, K] indices of the visible patches, in shuffled order
    ids_restore: torch.Tensor  # [N, L] inverse permutation: unshuffles [kept, masked] to the grid


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """How many patches stay visible: ``int(L * (1 - mask_ratio))``, as in the official MAE."""
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in the open interval (0, 1), got {mask_ratio}")
    keep = int(num_patches * (1.0 - mask_ratio))
    if keep < 1:
        raise ConfigError(
            f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}: lower it "
            f"to at most {1.0 - 1.0 / num_patches:.3f}"
        )
    return keep


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Per-sample uniform random masking by argsort of noise (small noise is kept).

    Args:
        noise: optional [N, L] tensor; the same noise always gives the same mask, which makes
            masks reproducible for tests and figures. Drawn uniformly when omitted.
    """
    keep = num_kept(num_patches, mask_ratio)
    if noise is None:
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    elif noise.shape != (batch_size, num_patches):
        raise ValueError(f"noise must be [N, L] = [{batch_size}, {num_patches}], got {list(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_patches, device=noise.device)
    mask.scatter_(1, ids_keep, 0.0)
    return Masking(mask, ids_keep, ids_restore)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: [N, L, D], ids: [N, K] -> [N, K, D], the tokens at ``ids`` for each sample."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def default_min_block(num_patches: int) -> int:
    """Smallest block BEiT draws, scaled with the grid: 16 of 196 patches (14x14) in the paper, 5 of 64 (8x8)."""
    return max(1, round(16 * num_patches / 196))


def blockwise_masking(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float = 0.4,
    min_block: int | None = None,
    max_block: int | None = None,
    min_aspect: float = 0.3,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """BEiT's blockwise masking (Bao et al., 2021, Algorithm 1): rectangles of patches until the target is reached.

    Per sample, blocks are drawn until ``L - num_kept(L, mask_ratio)`` patches are masked: a block's area
    is uniform in ``[min_block, patches still to mask]`` (capped by ``max_block``), its log aspect ratio
    uniform in ``[log min_aspect, -log min_aspect]``, and it must be smaller than the grid in both
    directions; a block is placed only if it adds between 1 and the remaining count of new patches,
    with up to 10 attempts. When all 10 fail the sample stops short of the target (rare; a few
    patches at most), as in the official code.

    Args:
        grid_size: (rows, cols) of the patch grid, L = rows * cols.
        min_block: smallest block area in patches; default :func:`default_min_block` (scales with L).
        max_block: largest block area; default: no limit but the target.
        seeds: one non-negative integer per sample; sample n's mask depends on ``seeds[n]`` alone
            (methods derive them from the samples' keys, :mod:`sslvit.seeding`). Default: drawn
            from the global torch RNG.

    Returns:
        mask [N, L] bool, True = masked, row-major like the patch grid.
    """
    rows, cols = grid_size
    length = rows * cols
    target = length - num_kept(length, mask_ratio)
    min_block = default_min_block(length) if min_block is None else min_block
    if min_block < 1 or (max_block is not None and max_block < min_block):
        raise ConfigError(f"min_block ({min_block}) must be >= 1 and <= max_block ({max_block})")
    if not 0.0 < min_aspect <= 1.0:
        raise ConfigError(f"min_aspect must be in (0, 1], got {min_aspect}")
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch_size,)).tolist()
    elif len(seeds) != batch_size:
        raise ValueError(f"seeds must hold one integer per sample ({batch_size}), got {len(seeds)}")
    # A Python loop over blocks with NumPy draws: far faster than drawing torch scalars one by one.
    masks = [
        block_mask(rows, cols, target, min_block, max_block or target, min_aspect, np.random.default_rng(seed))[0]
        for seed in seeds
    ]
    return torch.from_numpy(np.stack(masks).reshape(batch_size, length)).to(device)


def block_mask(
    rows: int, cols: int, target: int, min_block: int, max_block: int, min_aspect: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """One sample of :func:`blockwise_masking`: (mask [rows, cols] bool, blocks as (top, left, height, width))."""
    mask = np.zeros((rows, cols), dtype=bool)
    blocks: list[tuple[int, int, int, int]] = []
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    count = 0
    while count < target:
        budget = min(target - count, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min(min_block, budget), max(min_block, budget))  # as random.uniform(min_block, budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < h < rows and 0 < w < cols):
                continue
            top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
            new = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < new <= budget:
                mask[top : top + h, left : left + w] = True
                blocks.append((top, left, h, w))
                added = new
                break
        if added == 0:
            break
        count += added
    return mask, blocks
