"""Causal context networks over a grid of patch latents (CPC): c[i, j] sees only rows <= i.

The grid is scanned top to bottom; other scan directions are handled by turning the grid first
(:func:`orient`), so one implementation serves all four. Shapes: latents z [N, G, G, D],
contexts c [N, G, G, Dc], grid positions in row-major order.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch import nn

from sslvit.nn.pos_embed import sincos_pos_embed_2d

Direction = Literal["top_down", "bottom_up", "left_right", "right_left"]
DIRECTIONS: tuple[str, ...] = ("top_down", "bottom_up", "left_right", "right_left")


def orient(grid: torch.Tensor, direction: Direction) -> torch.Tensor:
    """grid [N, G, G, ...] -> the grid turned so that ``direction`` runs down the rows.

    ``top_down`` leaves it as it is; ``bottom_up`` reverses the rows; ``left_right`` swaps rows
    and columns; ``right_left`` swaps them and reverses. In the turned grid, "row i" is the i-th
    line of patches met when scanning in ``direction``.
    """
    if direction == "top_down":
        return grid
    if direction == "bottom_up":
        return grid.flip(1)
    if direction == "left_right":
        return grid.transpose(1, 2)
    if direction == "right_left":
        return grid.transpose(1, 2).flip(1)
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def row_causal_mask(rows: int, cols: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[L, L] boolean attention mask, L = rows * cols, True where the query's row >= the key's row."""
    row = torch.arange(rows, device=device).repeat_interleave(cols)  # [L] row of each grid position
    return row[:, None] >= row[None, :]


class CausalContext(nn.Module):
    """A transformer over the latent grid whose attention lets row i see rows <= i only.

    Attention with a row-causal mask (in place of CPC's masked PixelCNN convolutions): the
    receptive field of c[i, j] is every latent of rows 0..i, all columns. Fixed 2-D sin-cos
    positions tell it which latents are directly above (they carry no image content). LayerNorm
    only: no statistic is shared between grid positions or images.

    Args:
        in_dim: width D of the latents.
        dim, depth, num_heads: the transformer (dim divisible by num_heads and by 4).
        grid_size: G, rows (= columns) of the grid.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.embed = nn.Linear(in_dim, dim)
        # Derived, not learned: rebuilt on construction, so kept out of the state dict.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid_size).unsqueeze(0), persistent=False)
        self.register_buffer("attn_mask", row_causal_mask(grid_size, grid_size), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = LayerNorm(dim, eps=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, G, G, D] (already turned by :func:`orient`) -> c [N, G, G, dim]."""
        n, rows, cols, _ = z.shape
        if rows != self.grid_size or cols != self.grid_size:
            raise ValueError(f"expected a {self.grid_size}x{self.grid_size} latent grid, got {rows}x{cols}")
        x = self.embed(z.reshape(n, rows * cols, -1)) + self.pos_embed.to(z.dtype)  # [N, L, dim]
        for block in self.blocks:
            x = block(x, attn_mask=self.attn_mask)
        return self.norm(x).view(n, rows, cols, -1)
