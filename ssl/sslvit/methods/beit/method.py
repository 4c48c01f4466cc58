"""BEiT (Bao et al., 2021): predict the visual token of each masked patch from the corrupted image.

Shapes: images [N, C, H, W]; L patches on the backbone's grid; M masked patches in the batch;
D encoder width; V codes. The tokenizer is a k-means codebook (:mod:`sslvit.methods.beit.tokenizer`) held in
buffers, so checkpoints carry it and resuming or evaluating never needs its directory again; where it comes
from and the checks on a restored one are :mod:`sslvit.methods.beit.tokenizer_lifecycle`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.errors import ConfigError
from sslvit.methods.base import SSLMethod
from sslvit.methods.beit.tokenizer import KMeansTokenizer
from sslvit.methods.beit.tokenizer_fit import CodebookConfig
from sslvit.methods.beit.tokenizer_lifecycle import TokenizerLifecycle
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.masking import blockwise_masking, default_min_block, num_kept
from sslvit.seeding import splitmix64

MASK_SALT = 0x4245_4954  # 'BEIT': the stream of keyed random numbers used for masks


class BEiT(SSLMethod):
    """Masked image modeling with discrete targets: the shared ViT sees every patch, masked ones as a mask token.

    Args:
        backbone: the shared ViT; None gives ViT-Base/16 at 224 px with the paper's drop-path 0.1
            and layer scale 0.1 (set ``drop_path_rate`` and ``layer_scale_init`` in a config).
        tokenizer: directory of a fitted tokenizer (``tools/fit_tokenizer.py``); None fits one with
            ``codebook`` on the training data when training starts and saves it to
            ``<run dir>/tokenizer``. Either way the codebook is stored in the checkpoints.
        codebook: vocabulary size (the prediction head's width) and fitting settings of the k-means tokenizer.
        mask_ratio: fraction of patches masked per image (blockwise), in (0, 1); 0.4 in the paper.
        min_block: smallest masked block in patches; None scales the paper's 16 of 196 patches with the grid.
        max_block: largest masked block; None: up to the whole remaining count.
        min_aspect: blocks have aspect ratios in [min_aspect, 1 / min_aspect].
        base_lr: learning rate per 256 images: the paper's 1.5e-3 at batch 2048 is 1.875e-4.
        weight_decay, betas, warmup_epochs, clip_grad: AdamW (0.9, 0.999), decay 0.05, 10 warmup
            epochs then cosine, gradient norm clipped to 3.0, as in the paper.
        **kwargs: further optimizer settings of :class:`~sslvit.methods.base.SSLMethod` (``lr``, ``min_lr``, ...).
    """

    # BEiT's objective reads the patch tokens only; nothing trains the CLS token (the paper probes and
    # fine-tunes on the mean of the patch tokens).
    native_pooling = "mean"

    def __init__(
        self,
        backbone: ViTConfig | None = None,
        tokenizer: str | None = None,
        codebook: CodebookConfig | None = None,
        mask_ratio: float = 0.4,
        min_block: int | None = None,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        base_lr: float = 1.5e-3 * 256 / 2048,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 10.0,
        clip_grad: float | None = 3.0,
        **kwargs: Any,
    ) -> None:
        if backbone is None:
            backbone = ViTConfig(arch="vit_base", img_size=224, patch_size=16, drop_path_rate=0.1, layer_scale_init=0.1)
        config = ViTConfig.from_dict(backbone)
        if isinstance(codebook, dict):  # as stored in a checkpoint's hyper-parameters
            codebook = CodebookConfig(**codebook)
        codebook = (codebook or CodebookConfig()).resolved(config.img_size)
        check_masking(config, mask_ratio, min_block, max_block, min_aspect)
        super().__init__(
            backbone=config,
            base_lr=base_lr,
            weight_decay=weight_decay,
            betas=betas,
            warmup_epochs=warmup_epochs,
            clip_grad=clip_grad,
            **kwargs,
        )
        self.hparams["codebook"] = asdict(codebook)  # a plain dict, so checkpoints load with weights_only
        dim = self.backbone.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.code_head = nn.Linear(dim, codebook.vocab_size)
        self.tokenizer = KMeansTokenizer(
            codebook.vocab_size, config.patch_size, config.img_size, config.in_chans, codebook.color_weight
        )
        self.codebook_config = codebook
        # A plain object, not a module: the codebook's buffers are registered once, under tokenizer.*
        self.tokenizer_lifecycle = TokenizerLifecycle(self.tokenizer, config, codebook, tokenizer)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.code_head.weight, std=0.02)
        nn.init.zeros_(self.code_head.bias)

    # ---- the tokenizer: filled and checked by TokenizerLifecycle ----
    @property
    def tokenizer_info(self) -> dict[str, Any]:
        """Where the codebook came from (``source``, settings, fitting statistics); saved in checkpoints."""
        return self.tokenizer_lifecycle.info

    def set_tokenizer(self, tokenizer: KMeansTokenizer, source: str) -> None:
        """Copy a fitted tokenizer's codebook into this model after checking it fits the backbone and head."""
        self.tokenizer_lifecycle.set(tokenizer, source)

    def on_validation_start(self) -> None:
        # `sslvit validate` of a checkpoint (fit checks once, in on_fit_start)
        if self.tokenizer_lifecycle.fitted and self.trainer.state.fn == "validate":
            self.tokenizer_lifecycle.check_restored(getattr(self.trainer, "datamodule", None))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.tokenizer_lifecycle.on_fit_start(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokenizer_info"] = self.tokenizer_lifecycle.info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.tokenizer_lifecycle.info = checkpoint.get("tokenizer_info", {})

    # ---- the model ----
    def sample_mask(
        self, batch_size: int, grid: tuple[int, int], device: torch.device, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Blockwise masks [N, L] bool (True = masked) with this model's settings; mask n follows from ``keys[n]``."""
        h = self.hparams
        seeds = None if keys is None else [splitmix64(k ^ MASK_SALT) >> 1 for k in keys.tolist()]
        return blockwise_masking(
            batch_size, grid, h.mask_ratio, h.min_block, h.max_block, h.min_aspect, seeds=seeds, device=device
        )

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [N, C, H, W] -> (loss, logits [M, V] at masked positions, codes [N, L], mask [N, L] bool).

        ``mask`` fixes which patches are masked; by default a blockwise mask is drawn from the samples'
        ``keys`` [N] (or the global RNG). Logits are computed at masked positions only (row-major over
        (sample, patch)), as the loss needs no others.
        """
        self.tokenizer_lifecycle.load_if_needed()
        codes = self.tokenizer(images)  # [N, L], no gradients
        if mask is None:
            mask = self.sample_mask(images.shape[0], self.backbone.grid_of(images), images.device, keys)
        mask = mask.bool()
        tokens = self.backbone.forward_masked(images, mask, self.mask_token, row_keys=keys)[:, 1:]  # [N, L, D]
        logits = self.code_head(tokens[mask])  # [M, V]
        loss = F.cross_entropy(logits.float(), codes[mask])
        return loss, logits, codes, mask

    def compute_loss(self, images: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        loss, logits, codes, mask = self(images, keys=keys)
        accuracy = (logits.argmax(dim=-1) == codes[mask]).float().mean()
        return {"loss": loss, "masked_acc": accuracy}


def check_masking(
    config: ViTConfig, mask_ratio: float, min_block: int | None, max_block: int | None, min_aspect: float
) -> None:
    """Raise a ConfigError naming the key when the masking settings cannot work on the backbone's grid."""
    grid = config.grid_size
    if grid < 2:
        raise ConfigError(f"BEiT needs a patch grid of at least 2x2, got {grid}x{grid} (backbone img_size/patch_size)")
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in the open interval (0, 1), got {mask_ratio}")
    num_kept(grid * grid, mask_ratio)
    lowest = default_min_block(grid * grid) if min_block is None else min_block
    if lowest < 1:
        raise ConfigError(f"model.min_block must be at least 1, got {min_block}")
    if max_block is not None and max_block < lowest:
        raise ConfigError(f"model.max_block={max_block} must be at least model.min_block ({lowest})")
    if not 0.0 < min_aspect <= 1.0:
        raise ConfigError(f"model.min_aspect must be in (0, 1], got {min_aspect}")
