"""Model parts every method shares: the ViT backbone, positions, patches and masks, losses.

Pure modules and functions with shapes in their docstrings; nothing here knows about training.
"""

from sslvit.nn.backbone import PRESETS, TIMM_ARCH, VisionTransformer, ViTConfig
from sslvit.nn.losses import InfoNCE, info_nce, masked_cross_entropy, masked_mse, normalize_patches
from sslvit.nn.masking import (
    Masking,
    blockwise_masking,
    gather_tokens,
    num_kept,
    patchify,
    random_masking,
    unpatchify,
)
from sslvit.nn.pos_embed import sincos_pos_embed_2d

__all__ = [
    "PRESETS",
    "TIMM_ARCH",
    "InfoNCE",
    "Masking",
    "VisionTransformer",
    "ViTConfig",
    "blockwise_masking",
    "gather_tokens",
    "info_nce",
    "masked_cross_entropy",
    "masked_mse",
    "normalize_patches",
    "num_kept",
    "patchify",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]
