"""End-to-end fine-tuning: the protocol masked-image-modeling methods are ranked by (MAE, BEiT).

The recipe of MAE's ``main_finetune.py`` (itself BEiT's and DeiT's): every weight of the pretrained
encoder trains, with layer-wise learning-rate decay, drop path, mixup/cutmix with label smoothing
(soft-target cross entropy), RandAugment and random erasing (``data.supervised``), AdamW with
warmup then cosine, and a head on the mean of the patch tokens with its own norm.

Shapes: images [N, C, H, W], labels [N], logits [N, K] for K classes, tokens [N, 1 + L, D].
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.layers import LayerNorm, resample_abs_pos_embed
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from sslvit.checkpoints.io import check_state_dict
from sslvit.checkpoints.loading import load_backbone
from sslvit.errors import CheckpointError, ConfigError
from sslvit.eval.features import dataset_targets
from sslvit.methods.base import SSLMethod
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.pos_embed import sincos_pos_embed_2d
from sslvit.optim import layer_decay_param_groups, vit_layer_id
from sslvit.seeding import keyed_rng, splitmix64

MIXUP_SALT = 0x4D49_58  # 'MIX': the batch's mixup/cutmix draws follow its samples' keys


class FineTune(SSLMethod):
    """A classifier on the shared backbone, initialised from any sslvit checkpoint and trained end to end.

    Args:
        weights: what to fine-tune: a checkpoint of any method (Lightning ``.ckpt`` or an exported
            folder, read by :func:`sslvit.checkpoints.load_backbone`); the method's decoder and heads
            are left behind. None: train from scratch (random initialisation, same recipe).
        backbone: the architecture; default: that of ``weights`` at the image size it is evaluated at
            (whole images for CPC). With ``weights``, their tensors must fit it; fixed sin-cos
            positions are regenerated and learned ones interpolated for another image size.
        num_classes: classes of the labelled data (labels 0 .. num_classes - 1).
        pooling: ``mean`` of the patch tokens, then a LayerNorm of its own (MAE's default; the
            backbone's final norm is unused and frozen), or the ``cls`` token after the final norm.
        drop_path_rate: stochastic depth of the fine-tuned backbone (replaces ``backbone.drop_path_rate``).
        layer_decay: layer-wise lr decay: layer ``l`` (0: patch embedding, CLS token, positions;
            block i: i + 1; head and norms: depth + 1) trains at ``lr * layer_decay ** (depth + 1 - l)``.
        trainable_blocks: fine-tune only the last k blocks, the norms and the head (MAE's partial
            fine-tuning; 0 trains the head and norms only); None: every weight.
        mixup, cutmix: alpha of timm's mixup and cutmix (0 disables each); with either, the targets
            are soft (label smoothing included) and the loss is soft-target cross entropy.
        mixup_prob: probability of mixing a batch; mixup_switch_prob: of cutmix when both are on.
        label_smoothing: of the training targets.
        head_init_std: the head's weights start from a truncated normal of this std, biases at 0.
        base_lr, weight_decay, betas, warmup_epochs, min_lr: the optimizer of MAE's fine-tuning
            (lr = base_lr x global batch / 256); **kwargs: other settings of
            :class:`~sslvit.methods.base.SSLMethod` (``lr``, ``warmup_steps``, ``clip_grad``, ``compile``).
    """

    def __init__(
        self,
        weights: str | None = None,
        backbone: ViTConfig | None = None,
        num_classes: int = 1000,
        pooling: Literal["mean", "cls"] = "mean",
        drop_path_rate: float = 0.1,
        layer_decay: float = 0.75,
        trainable_blocks: int | None = None,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        head_init_std: float = 2e-5,
        base_lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"model.pooling must be 'mean' or 'cls', got {pooling!r}")
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be at least 2, got {num_classes}")
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"model.layer_decay must be in (0, 1] (1 disables it), got {layer_decay}")
        if mixup < 0 or cutmix < 0 or not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"model.mixup ({mixup}) and model.cutmix ({cutmix}) must be >= 0 and model.label_smoothing "
                f"({label_smoothing}) in [0, 1)"
            )
        pretrained = None
        if backbone is None:
            if weights is None:
                raise ConfigError(
                    "FineTune needs model.weights (a checkpoint to fine-tune) or model.backbone (an "
                    "architecture to train from scratch)"
                )
            pretrained, info = load_backbone(weights)  # the architecture comes with the weights
            config = replace(pretrained.config, img_size=info.image_size)
        else:
            config = ViTConfig.from_dict(backbone)
        config = replace(config, drop_path_rate=drop_path_rate)
        depth = config.dims[1]
        if trainable_blocks is not None and not 0 <= trainable_blocks <= depth:
            raise ConfigError(
                f"model.trainable_blocks must be in [0, {depth}] (the depth) or null, got {trainable_blocks}"
            )
        super().__init__(
            backbone=config,
            base_lr=base_lr,
            weight_decay=weight_decay,
            betas=betas,
            warmup_epochs=warmup_epochs,
            min_lr=min_lr,
            **kwargs,
        )
        dim = self.backbone.embed_dim
        # MAE fine-tunes the positions (timm's ViT holds them as a parameter), from the pretrained table.
        self.backbone.pos_embed = nn.Parameter(self.backbone.pos_embed.detach().clone())
        self.fc_norm = LayerNorm(dim, eps=1e-6) if pooling == "mean" else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std, a=-2 * head_init_std, b=2 * head_init_std)
        nn.init.zeros_(self.head.bias)
        self.stop_gradients(trainable_blocks, pooling)

        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            self.train_loss = SoftTargetCrossEntropy()  # smoothing is inside the mixed targets
        elif label_smoothing > 0:
            self.train_loss = LabelSmoothingCrossEntropy(label_smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()
        self._pretrained_state = pretrained.state_dict() if pretrained is not None else None
        self._weights_loaded = False
        self._val_sums: torch.Tensor | None = None
        #: one entry per validation of the run: epoch, step, top1, top5 (percent), loss
        self.history: list[dict[str, float]] = []

    # ---- the model ----
    def stop_gradients(self, trainable_blocks: int | None, pooling: str) -> None:
        """Stop gradients of what does not train: unused final norm (mean pooling); all but the last k blocks."""
        frozen: list[nn.Module | nn.Parameter] = []
        if pooling == "mean":
            frozen.append(self.backbone.norm)
        if trainable_blocks is not None:
            blocks = self.backbone.blocks
            frozen += [self.backbone.patch_embed, self.backbone.cls_token, self.backbone.pos_embed]
            frozen += list(blocks[: len(blocks) - trainable_blocks])
        for part in frozen:
            for param in part.parameters() if isinstance(part, nn.Module) else [part]:
                param.requires_grad_(False)

    def forward(self, images: torch.Tensor, row_keys: torch.Tensor | None = None) -> torch.Tensor:
        """images [N, C, H, W] -> logits [N, K]; drop path drawn from the samples' keys ``row_keys`` [N]."""
        if self.hparams.pooling == "mean":
            tokens = self.backbone.forward_features(images, norm=False, row_keys=row_keys)  # [N, 1 + L, D]
            features = self.fc_norm(tokens[:, 1:].mean(dim=1))
        else:
            features = self.backbone.forward_features(images, row_keys=row_keys)[:, 0]
        return self.head(features)

    def setup(self, stage: str) -> None:
        # Before a resumed checkpoint is restored (which then replaces these weights); never when a
        # model is rebuilt from its own checkpoint, so that does not need the original file.
        if stage == "fit" and self.hparams.weights is not None and not self._weights_loaded:
            self.load_pretrained(self.hparams.weights)
        elif stage == "fit" and self.hparams.weights is None:
            rank_zero_info("FineTune: model.weights is null, so the backbone trains from random initialisation")

    def load_pretrained(self, path: str) -> None:
        """Copy the encoder of ``path`` into the backbone, tensor for tensor (positions resized if needed)."""
        state = self._pretrained_state
        if state is None:
            state = load_backbone(path)[0].state_dict()
        own = self.backbone.state_dict()
        state = {**state, "pos_embed": self._positions_from(state.get("pos_embed"), own["pos_embed"], path)}
        check_state_dict(own, state, f"model.weights={path}")
        with torch.no_grad():
            self.backbone.load_state_dict(state)
        self._pretrained_state, self._weights_loaded = None, True

    def _positions_from(self, table: torch.Tensor | None, own: torch.Tensor, path: str) -> torch.Tensor | None:
        """The checkpoint's position table [1, 1 + L', D] for this model's grid of L tokens."""
        if table is None or table.shape == own.shape:
            return table
        if table.shape[-1] != own.shape[-1]:
            raise CheckpointError(
                f"model.weights={path}: positions are {table.shape[-1]} wide, the model's {own.shape[-1]}"
            )
        old_grid = int(round((table.shape[1] - 1) ** 0.5))
        if old_grid * old_grid != table.shape[1] - 1:
            raise CheckpointError(f"model.weights={path}: {table.shape[1] - 1} positions are not a square grid")
        fixed = sincos_pos_embed_2d(table.shape[-1], old_grid, cls_token=True).unsqueeze(0)
        if table.shape == fixed.shape and torch.allclose(table, fixed, atol=1e-6):
            return own  # fixed sin-cos: this model's table is already the exact one for its grid
        grid = self.backbone_config.grid_size  # timm's resize, as the backbone's own (bicubic, antialiased)
        return resample_abs_pos_embed(table, new_size=[grid, grid], old_size=[old_grid, old_grid])

    # ---- steps ----
    def batch_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Training loss of a labelled batch, after mixup/cutmix drawn from the batch's sample keys."""
        images, keys = self.unpack(batch)
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        targets = labels
        if self.mixup is not None:
            if images.shape[0] % 2:
                raise ConfigError(
                    f"mixup/cutmix pair images within a batch: use an even data.batch_size, not {len(images)}"
                )
            with keyed_rng(splitmix64(int(keys[0]) ^ MIXUP_SALT) >> 1):
                images, targets = self.mixup(images, labels)
        return {"loss": self.train_loss(self(images, row_keys=keys), targets)}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1/top-5 counts and summed cross entropy over the val split (deterministic transform, no mixup)."""
        images, _ = self.unpack(batch)
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        logits = self(images).float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]  # [N, 5]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        count = loss.new_tensor(len(labels))
        sums = torch.stack([hits[:, 0].sum().float(), hits.any(dim=1).sum().float(), count, loss])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        if self._val_sums is None:
            return
        # Exact over the whole split: counts summed over batches and devices, divided once.
        correct1, correct5, count, loss = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        self._val_sums = None
        result = {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss / count}
        for key, value in result.items():  # the same on every device: sync_dist only silences Lightning
            self.log(f"val/{key}", value, prog_bar=key == "top1", sync_dist=True)
        if not self.trainer.sanity_checking:
            steps_per_epoch = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
            epoch = round(self.global_step / steps_per_epoch, 3) if self.trainer.num_training_batches else 0.0
            self.history.append({"epoch": epoch, "step": self.global_step, **result})

    # ---- the recipe ----
    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "fit_split"):
            return  # plain DataLoaders: the caller vouches for labels and augmentations
        if datamodule.fit_split != "train":
            raise ConfigError(
                "FineTune trains on the labelled train split: set data.supervised (timm's augmentations, e.g. "
                "`data.supervised: {}` for MAE's defaults), as configs/finetune/*.yaml do"
            )
        largest = max(dataset_targets(datamodule.build_dataset("train", None)))
        if largest >= self.hparams.num_classes:
            raise ConfigError(
                f"model.num_classes={self.hparams.num_classes} but the train split has label {largest}: "
                f"set model.init_args.num_classes {largest + 1}"
            )

    def group_matcher(self, coarse: bool = False) -> Any:
        """Layer of every parameter for timm's layer-decay groups (see :func:`sslvit.optim.vit_layer_id`)."""
        depth = len(self.backbone.blocks)
        return lambda name: vit_layer_id(name, depth)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """One AdamW group per (layer, weight decay or not), each with its ``lr_scale``; frozen parameters left out."""
        return layer_decay_param_groups(self, weight_decay, self.hparams.layer_decay)

    # ---- the history travels with checkpoints, so a resumed run reports every epoch ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["finetune_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.history = list(checkpoint.get("finetune_history", []))
