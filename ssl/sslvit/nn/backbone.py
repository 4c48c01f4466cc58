"""The one Vision Transformer that every method shares.

Built from timm's layers with timm's parameter names (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.attn.qkv``, ``norm``), so a state dict moves into
``timm.create_model("vit_*", **config.timm_kwargs())`` and back. Positions are fixed 2-D sin-cos, or
a learned table (``pos_embed="learned"``) for weights trained that way elsewhere (timm, DINO).

Three ways in, one trunk:
- :meth:`VisionTransformer.forward_features` encodes all patches;
- :meth:`VisionTransformer.forward_visible` encodes only a kept subset (MAE);
- :meth:`VisionTransformer.forward_masked` replaces chosen patches by a mask embedding (BEiT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from sslvit.errors import ConfigError
from sslvit.nn.drop_path import KeyedDropPath, drawn_from, drop_path_draws
from sslvit.nn.masking import gather_tokens
from sslvit.nn.pos_embed import sincos_pos_embed_2d

# name -> (embed_dim, depth, num_heads), the sizes of the ViT and DeiT papers.
PRESETS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}
# A timm architecture per preset; its size arguments are overridden by ViTConfig.timm_kwargs().
TIMM_ARCH = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_huge": "vit_huge_patch14_224",
}
Pooling = Literal["cls", "mean"]
PosEmbed = Literal["sincos", "learned"]


@dataclass
class ViTConfig:
    """Architecture of the shared backbone.

    Args:
        arch: size preset, one of vit_tiny (192 wide), vit_small (384), vit_base (768),
            vit_large (1024), vit_huge (1280); ``embed_dim``/``depth``/``num_heads`` override it.
        img_size: side of the (square) training image in pixels; other sizes divisible by the
            patch size also run, with positions generated for their grid.
        patch_size: side of a patch in pixels.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        layer_scale_init: initial value of LayerScale (e.g. 0.1 for BEiT); None disables it.
        grad_checkpointing: recompute block activations in the backward pass to save memory.
        pos_embed: ``sincos`` (fixed, regenerated exactly for other grids; MAE) or ``learned`` (a
            trained table, as in timm's and DINO's ViTs: a parameter, resized bicubically for other grids).
    """

    arch: str = "vit_base"
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    layer_scale_init: float | None = None
    grad_checkpointing: bool = False
    pos_embed: PosEmbed = "sincos"

    def __post_init__(self) -> None:
        if self.arch not in PRESETS:
            raise ConfigError(f"backbone.arch={self.arch!r} is unknown; choose one of {sorted(PRESETS)}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ConfigError(f"backbone.pos_embed={self.pos_embed!r} is unknown; choose 'sincos' or 'learned'")
        for key in ("img_size", "patch_size", "in_chans"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"backbone.{key} must be positive, got {getattr(self, key)}")
        if self.img_size % self.patch_size:
            lower = self.img_size - self.img_size % self.patch_size
            raise ConfigError(
                f"backbone.img_size={self.img_size} is not divisible by backbone.patch_size="
                f"{self.patch_size}: use an image size that is a multiple of the patch size "
                f"(e.g. {lower or self.patch_size} or {lower + self.patch_size})"
            )
        dim, _, heads = self.dims
        if dim % heads:
            raise ConfigError(f"backbone.embed_dim={dim} is not divisible by backbone.num_heads={heads}")
        if dim % 4:
            raise ConfigError(f"backbone.embed_dim={dim} must be divisible by 4 for 2-D sin-cos positions")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"backbone.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def dims(self) -> tuple[int, int, int]:
        """(embed_dim, depth, num_heads) after applying overrides to the preset."""
        dim, depth, heads = PRESETS[self.arch]
        return (self.embed_dim or dim, self.depth or depth, self.num_heads or heads)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @classmethod
    def from_dict(cls, values: dict[str, Any] | ViTConfig) -> ViTConfig:
        """Build from a plain dict (as stored in checkpoints); unknown keys are an error."""
        if isinstance(values, ViTConfig):
            return values
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown backbone settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def timm_kwargs(self, pooling: Pooling = "cls") -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(TIMM_ARCH[arch], **kwargs)`` giving this encoder.

        ``pooling`` picks what timm's ``model(images)`` returns, as :meth:`VisionTransformer.forward` does:
        the CLS token (``token``) or the mean of the normalized patch tokens (``avg`` without timm's
        ``fc_norm``, which would move the final norm after the pooling).
        """
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        dim, depth, heads = self.dims
        pool = {"global_pool": "token"} if pooling == "cls" else {"global_pool": "avg", "fc_norm": False}
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            init_values=self.layer_scale_init,
            num_classes=0,
            class_token=True,
            **pool,
        )


class VisionTransformer(nn.Module):
    """ViT encoder: patch embedding, CLS token, fixed sin-cos positions, pre-norm blocks, final norm."""

    def __init__(self, config: ViTConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        config = ViTConfig.from_dict(config) if config is not None else ViTConfig()
        if overrides:
            config = ViTConfig(**{**config.to_dict(), **overrides})
        self.config = config
        dim, depth, heads = config.dims
        self.embed_dim, self.num_heads, self.patch_size = dim, heads, config.patch_size
        self.grad_checkpointing = config.grad_checkpointing

        # strict_img_size=False: any image whose sides are multiples of the patch size is accepted.
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed positions: a buffer, so the optimizer never sees it; persistent, so the state
        # dict carries it under timm's name. Learned positions: a parameter under the same name.
        pos = sincos_pos_embed_2d(dim, config.grid_size, cls_token=True).unsqueeze(0)
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty_like(pos), std=0.02))  # timm's init
        else:
            self.register_buffer("pos_embed", pos, persistent=True)
        rates = torch.linspace(0, config.drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                dim,
                heads,
                config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                init_values=config.layer_scale_init,
                drop_path=rate,
            )
            for rate in rates
        )
        for block in self.blocks:  # stochastic depth from the rows' keys (sslvit.nn.drop_path), not the global RNG
            for name in ("drop_path1", "drop_path2"):
                if isinstance(getattr(block, name), DropPath):
                    setattr(block, name, KeyedDropPath(getattr(block, name).drop_prob))
        self.norm = LayerNorm(dim, eps=1e-6)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE initialisation: xavier-uniform linears (patch projection as a linear), N(0, 0.02) CLS."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @property
    def num_features(self) -> int:
        return self.embed_dim

    # ---- embedding -------------------------------------------------------------------------
    def grid_of(self, images: torch.Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {p}: resize or crop the "
                f"images to a multiple of {p} (the model was built for {self.config.img_size}px)"
            )
        return h // p, w // p

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, 1 + H*W, D] positions for a grid: sin-cos regenerated exactly for a new grid size, a
        learned table resized as timm resizes it (bicubic, antialiased), so features stay timm's."""
        native = self.config.grid_size
        if grid == (native, native):
            return self.pos_embed
        if self.config.pos_embed == "learned":
            return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=[native, native])
        pos = sincos_pos_embed_2d(self.embed_dim, grid, cls_token=True)
        return pos.to(self.pos_embed).unsqueeze(0)

    def embed_patches(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """images [N, C, H, W] -> patch embeddings [N, L, D], or [N, K, D] of the patches at ``ids`` [N, K].

        All patches go through ``patch_embed`` as in timm, so features equal timm's bit for bit. With
        ``ids`` (MAE), the projection, a convolution whose stride is its kernel, runs as one matmul
        over the kept patches only: a quarter of the work, and no cuDNN layout conversions (6% of a
        ViT-B MAE step on an H100).
        """
        if ids is None:
            return self.patch_embed(images)
        (h, w), p = self.grid_of(images), self.patch_size
        n, c = images.shape[:2]
        # [N, C, h, p, w, p] -> [N, h*w, C*p*p], flattened in the (c, i, j) order of the conv weight
        patches = images.reshape(n, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, c * p * p)
        proj = self.patch_embed.proj
        return self.patch_embed.norm(F.linear(gather_tokens(patches, ids), proj.weight.flatten(1), proj.bias))

    def patch_tokens(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images: [N, C, H, W] -> (patch tokens with positions [N, L, D], CLS with position [N, 1, D]).

        With ``mask`` [N, L] (1 = masked) and ``mask_token`` [1, 1, D], masked patch embeddings
        are replaced by the mask token before positions are added (BEiT). With ``ids_keep`` [N, K]
        only those patches are embedded: tokens [N, K, D] (MAE).
        """
        pos = self.position_table(self.grid_of(images))
        x = self.embed_patches(images, ids_keep)  # [N, L or K, D]
        if mask is not None:
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1.0 - w) + mask_token.to(x.dtype) * w
        patch_pos = pos[:, 1:].expand(x.shape[0], -1, -1)
        x = x + (patch_pos if ids_keep is None else gather_tokens(patch_pos, ids_keep))
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return x, cls

    def run_blocks(self, x: torch.Tensor, norm: bool = True, row_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer blocks, then the final norm unless ``norm=False``: [N, T, D] -> [N, T, D].

        ``row_keys`` [N] (int64): row n's stochastic-depth decisions are drawn from its key
        (:mod:`sslvit.nn.drop_path`); without keys, from the global generator.
        """
        draws = None
        if row_keys is not None and self.training and self.config.drop_path_rate > 0:
            draws = drop_path_draws(row_keys, 2 * len(self.blocks), x.device).view(-1, len(self.blocks), 2)
        for i, block in enumerate(self.blocks):
            block_draws = None if draws is None else draws[:, i]
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._run_block, block, x, block_draws, use_reentrant=False)
            else:
                x = self._run_block(block, x, block_draws)
        return self.norm(x) if norm else x

    @staticmethod
    def _run_block(block: nn.Module, x: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
        """One block with its drop-path draws [N, 2] in place: a recomputation under checkpointing draws the same."""
        branches = [m for m in (block.drop_path1, block.drop_path2) if isinstance(m, KeyedDropPath)]
        if not branches:
            return block(x)
        with drawn_from(branches, draws):
            return block(x)

    # ---- the three entry points --------------------------------------------------------------
    # Each takes ``row_keys`` [N]: the samples' random keys, from which stochastic depth is drawn (run_blocks).
    def forward_features(
        self, images: torch.Tensor, norm: bool = True, row_keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode all patches: images [N, C, H, W] -> tokens [N, 1 + L, D] (CLS first).

        ``norm=False`` leaves out the final norm (MAE's fine-tuning pools the tokens before its own norm).
        """
        x, cls = self.patch_tokens(images)
        return self.run_blocks(torch.cat([cls, x], dim=1), norm=norm, row_keys=row_keys)

    def forward_visible(
        self, images: torch.Tensor, ids_keep: torch.Tensor, row_keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode only the patches at ``ids_keep`` [N, K]: -> tokens [N, 1 + K, D] (MAE)."""
        x, cls = self.patch_tokens(images, ids_keep=ids_keep)
        return self.run_blocks(torch.cat([cls, x], dim=1), row_keys=row_keys)

    def forward_masked(
        self, images: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor, row_keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode all patches with masked ones [N, L] replaced by ``mask_token``: -> [N, 1 + L, D]."""
        x, cls = self.patch_tokens(images, mask, mask_token)
        return self.run_blocks(torch.cat([cls, x], dim=1), row_keys=row_keys)

    # ---- features for evaluation ---------------------------------------------------------------
    @staticmethod
    def pool(tokens: torch.Tensor, pooling: Pooling = "cls") -> torch.Tensor:
        """tokens [N, 1 + L, D] -> [N, D]: the CLS token, or the mean of the patch tokens."""
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens[:, 1:].mean(dim=1)
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")

    def forward(
        self, images: torch.Tensor, pooling: Pooling = "cls", row_keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features [N, D]."""
        return self.pool(self.forward_features(images, row_keys=row_keys), pooling)

    def get_intermediate_layers(self, images: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each passed through the final norm (DINO protocol)."""
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"n must be in [1, {len(self.blocks)}], got {n}")
        x, cls = self.patch_tokens(images)
        x = torch.cat([cls, x], dim=1)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n:
                outputs.append(self.norm(x))
        return outputs
