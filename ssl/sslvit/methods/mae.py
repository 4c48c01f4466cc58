"""Masked Autoencoders (He et al., 2021): encode the visible 25% of patches, reconstruct the rest.

Shapes: images [N, C, H, W]; L patches of p*p*C values; K = int(L * (1 - mask_ratio)) visible;
D encoder width, Dd decoder width.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from timm.layers import LayerNorm
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.io import safe_load
from sslvit.checkpoints.official import load_official_mae
from sslvit.checkpoints.outside import read_outside_weights, unwrap_state_dict
from sslvit.errors import CheckpointError, ConfigError
from sslvit.methods.base import SSLMethod
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.losses import masked_mse, normalize_patches
from sslvit.nn.masking import gather_tokens, patchify, random_masking
from sslvit.nn.pos_embed import sincos_pos_embed_2d
from sslvit.seeding import keyed_rand

MASK_SALT = 0x4D41_45  # 'MAE': the stream of keyed random numbers used for masks


class MAE(SSLMethod):
    """Asymmetric encoder/decoder with masked-patch pixel regression.

    Args:
        backbone: the shared ViT encoder; it only ever sees visible patches and the CLS token.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the light decoder (paper: 512, 8, 16).
        mask_ratio: fraction of patches hidden from the encoder, in (0, 1).
        norm_pix_loss: regress patches normalized by their own mean and variance (paper default).
        init_from: an official facebookresearch/mae ``.pth`` checkpoint (``{"model": state_dict}``,
            with or without decoder) loaded before training; any key or shape mismatch is an error.
        **kwargs: optimizer settings of :class:`~sslvit.methods.base.SSLMethod`.
    """

    native_pooling = "cls"  # MAE's linear probe reads the CLS token, which its encoder always carries

    def __init__(
        self,
        backbone: ViTConfig | None = None,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        init_from: str | None = None,
        **kwargs,
    ) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio must be in the open interval (0, 1), got {mask_ratio}")
        if decoder_embed_dim % decoder_num_heads:
            raise ConfigError(
                f"model.decoder_embed_dim={decoder_embed_dim} is not divisible by "
                f"model.decoder_num_heads={decoder_num_heads}"
            )
        if decoder_embed_dim % 4 or decoder_depth < 1:
            raise ConfigError("model.decoder_embed_dim must be divisible by 4 and model.decoder_depth >= 1")
        super().__init__(backbone=backbone, **kwargs)
        cfg = self.backbone_config
        p, grid, dim = cfg.patch_size, cfg.grid_size, self.backbone.embed_dim
        self.mask_ratio, self.norm_pix_loss, self.patch_size = mask_ratio, norm_pix_loss, p

        # Decoder: attribute names as in the official code, so its checkpoints load key for key.
        self.decoder_embed = nn.Linear(dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        pos = sincos_pos_embed_2d(decoder_embed_dim, grid, cls_token=True).unsqueeze(0)
        self.register_buffer("decoder_pos_embed", pos, persistent=True)
        self.decoder_blocks = self.make_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads)
        self.decoder_norm = LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, p * p * cfg.in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_official(
        cls, path: str | Path, decoder_num_heads: int | None = None, norm_pix_loss: bool = True
    ) -> tuple[MAE, CheckpointInfo]:
        """Encoder and decoder of an official facebookresearch/mae ``.pth`` with its decoder (eval mode, CPU).

        Every size comes from the weights' shapes except the decoder's heads, which no tensor records:
        ``decoder_num_heads`` defaults to one per 32 channels (the official 512-wide decoder has 16).
        ``norm_pix_loss``: whether the weights were trained on per-patch normalized pixels (the released
        pretraining weights were; the demo's "visualize" weights were not). Returns the model and its
        checkpoint's info (ImageNet's preprocessing, the weights' image size).
        """
        raw = safe_load(path)
        source = f"official MAE checkpoint {path}"
        config, _, info = read_outside_weights(raw, source)
        state, _ = unwrap_state_dict(raw, source)
        if not info.has_decoder:
            raise CheckpointError(
                f"{path} holds the MAE encoder only: reconstructions need the decoder (decoder_embed, "
                "decoder_blocks, decoder_pred); its features work with every evaluation tool"
            )
        width = state["decoder_embed.weight"].shape[0]
        model = cls(
            backbone=config,
            decoder_embed_dim=width,
            decoder_depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks.")),
            decoder_num_heads=decoder_num_heads or max(1, width // 32),
            norm_pix_loss=norm_pix_loss,
        )
        load_official_mae(model, path, state)
        return model.eval(), replace(info, method="official MAE")

    def setup(self, stage: str) -> None:
        # Here rather than in __init__: runs before a resumed checkpoint is restored, so resuming
        # keeps the trained weights, and load_from_checkpoint never needs the original file.
        if stage == "fit" and self.hparams.init_from:
            load_official_mae(self, self.hparams.init_from)

    # ---- the model ----
    def forward_encoder(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, row_keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [N, C, H, W] -> (latent [N, 1+K, D], mask [N, L], ids_restore [N, L]); ``row_keys`` [N]: the
        samples' keys, which stochastic depth (if any) is drawn from."""
        h, w = self.backbone.grid_of(images)
        masking = random_masking(images.shape[0], h * w, self.mask_ratio, noise=noise, device=images.device)
        latent = self.backbone.forward_visible(images, masking.ids_keep, row_keys=row_keys)
        return latent, masking.mask, masking.ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, 1+K, D] -> predicted patches [N, L, p*p*C]."""
        x = self.decoder_embed(latent)  # [N, 1+K, Dd]
        n, length = ids_restore.shape
        visible = x[:, 1:]
        # Append mask tokens after the visible ones, then undo the shuffle: [N, L, Dd] in grid order.
        fill = self.mask_token.to(x.dtype).expand(n, length - visible.shape[1], -1)
        patches = gather_tokens(torch.cat([visible, fill], dim=1), ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on masked patches; targets per-patch normalized with ``norm_pix_loss``."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        return masked_mse(pred, target, mask)

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, row_keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [N, C, H, W] -> (loss, pred [N, L, p*p*C], mask [N, L]); ``noise`` [N, L] fixes the mask."""
        latent, mask, ids_restore = self.forward_encoder(images, noise, row_keys)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(images, pred, mask), pred, mask

    def compute_loss(self, images: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        noise = None
        if keys is not None:  # each sample's mask follows from its key
            h, w = self.backbone.grid_of(images)
            noise = keyed_rand(keys, h * w, salt=MASK_SALT, device=images.device)
        loss, _, _ = self(images, noise=noise, row_keys=keys)
        return {"loss": loss}
