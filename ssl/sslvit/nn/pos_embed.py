"""Fixed 2-D sine-cosine position embeddings. (Learned tables are resized by timm's ``resample_abs_pos_embed``,
as :meth:`sslvit.nn.backbone.VisionTransformer.position_table` does.)

Layout (the same as facebookresearch/mae, so its checkpoints keep their meaning): for a token in
row ``r`` and column ``c`` of the patch grid and ``D = embed_dim``, with ``w_k = 10000 ** (-k / (D/4))``

    channels [0,    D/4)  sin(c * w_k)        channels [D/2,  3D/4) sin(r * w_k)
    channels [D/4,  D/2)  cos(c * w_k)        channels [3D/4, D)    cos(r * w_k)

and the CLS token, when present, gets an all-zero position.
"""

from __future__ import annotations

import torch


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions: [M] -> [M, embed_dim] as ``cat(sin(pos * w), cos(pos * w))``."""
    if embed_dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D table for a ``grid_size`` patch grid: [(1 +) H*W, embed_dim] in float32, row-major."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    h, w = _pair(grid_size)
    rows = torch.arange(h).repeat_interleave(w)  # [H*W] row index of each token
    cols = torch.arange(w).repeat(h)  # [H*W] column index of each token
    table = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=table.dtype), table], dim=0)
    return table.float()
