"""Overlapping patch grids (CPC): geometry, extraction, and augmentation of each patch on its own.

An image of side ``S`` is cut into a ``G x G`` grid of ``P x P`` patches whose corners are
``stride`` pixels apart, ``G = (S - P) / stride + 1``; neighbouring patches share ``P - stride``
pixel rows (or columns). Patch ``(i, j)`` covers pixel rows ``[stride*i, stride*i + P)`` and
columns ``[stride*j, stride*j + P)``. Shapes: images [N, C, S, S]; patches [N, G, G, C, P, P].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslvit.errors import ConfigError

# image side -> (patch side, stride): a 7x7 grid with 50% overlap, the geometry of CPC v2
# (which cut 256 px images into 64 px patches with stride 32).
GRID_PRESETS: dict[int, tuple[int, int]] = {32: (8, 4), 64: (16, 8), 224: (56, 28)}


@dataclass(frozen=True)
class PatchGrid:
    """A square grid of overlapping square patches covering a square image edge to edge."""

    image_size: int
    patch_size: int
    stride: int

    def __post_init__(self) -> None:
        presets = ", ".join(f"{s} px: {p} px patches, stride {t}" for s, (p, t) in GRID_PRESETS.items())
        if not 0 < self.stride <= self.patch_size <= self.image_size:
            raise ConfigError(
                f"patch grid: need 0 < model.patch_stride ({self.stride}) <= patch side backbone.img_size "
                f"({self.patch_size}) <= model.image_size ({self.image_size}) so that the patches cover the "
                f"image; presets: {presets}"
            )
        if (self.image_size - self.patch_size) % self.stride:
            raise ConfigError(
                f"patch grid: model.image_size={self.image_size} minus the patch side backbone.img_size="
                f"{self.patch_size} is not a multiple of model.patch_stride={self.stride}, so the last patch "
                f"would not end at the image edge; presets: {presets}"
            )

    @property
    def size(self) -> int:
        """G, the number of patch rows (= columns)."""
        return (self.image_size - self.patch_size) // self.stride + 1

    @property
    def overlap(self) -> int:
        """Pixels shared by neighbouring patches."""
        return self.patch_size - self.stride

    def row_end(self, i: int) -> int:
        """First pixel row below patch row ``i``: pixels at or past it lie only in patch rows > i."""
        return self.stride * i + self.patch_size

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, S, S] -> patches [N, G, G, C, P, P] (copies only when the caller reshapes)."""
        if images.ndim != 4 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images [N, C, {self.image_size}, {self.image_size}] for this patch grid, got "
                f"{list(images.shape)}; the data module must deliver model.image_size px images"
            )
        p, s = self.patch_size, self.stride
        grid = images.unfold(2, p, s).unfold(3, p, s)  # [N, C, G, G, P, P]
        return grid.permute(0, 2, 3, 1, 4, 5)


def augment_patches(
    patches: torch.Tensor,
    channel_drop_prob: float = 0.5,
    hflip_prob: float = 0.5,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPC v2 patch augmentation, drawn independently for every patch: patches [M, C, P, P] -> same shape.

    - horizontal flip with probability ``hflip_prob``;
    - colour dropping: with probability ``channel_drop_prob`` all channels but one (chosen
      uniformly) are set to 0, the dataset mean of normalized images; CPC v2 drops two of the
      three colour channels so that the encoder cannot match patches by colour statistics alone.

    ``draws`` [M, 3] are the uniform [0, 1) numbers that decide, per patch, the flip, the drop and
    the kept channel (e.g. from the samples' keys, :func:`sslvit.seeding.keyed_rand`); drawn from
    the global RNG when omitted. Nothing mixes patches: an augmented patch depends on its own pixels only.
    """
    m, c = patches.shape[:2]
    if draws is None:
        draws = torch.rand(m, 3, device=patches.device)
    if draws.shape != (m, 3):
        raise ValueError(f"draws must be [M, 3] = [{m}, 3] uniform numbers, got {list(draws.shape)}")
    draws = draws.to(patches.device)
    flip, drop = draws[:, 0] < hflip_prob, draws[:, 1] < channel_drop_prob  # [M], [M]
    patches = torch.where(flip[:, None, None, None], patches.flip(-1), patches)
    kept = (draws[:, 2] * c).long().clamp_max(c - 1)  # [M]
    keep = (torch.arange(c, device=patches.device) == kept[:, None]) | ~drop[:, None]  # [M, C]
    return patches * keep[:, :, None, None].to(patches.dtype)
