"""Patches and masks: patchify / unpatchify, per-sample random masking, token gathering.

Conventions used everywhere in sslvit:
- a patch grid of ``L = H/p * W/p`` patches in row-major order;
- a mask is ``[N, L]`` with 1 (or True) = masked (hidden from the encoder), 0 = visible;
- a patch vector is ``[p * p * C]`` in (row, column, channel) order, the layout of the official
  MAE code, so that its decoder weights predict the same pixels here.
"""

from __future__ import annotations

from typing import NamedTuple

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
