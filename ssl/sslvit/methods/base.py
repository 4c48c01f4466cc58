"""What every method shares: the backbone, the optimizer recipe, the schedule and the logging.

A method subclasses :class:`SSLMethod` and implements :meth:`SSLMethod.compute_loss`; its typed
``__init__`` is its config schema (LightningCLI picks the class by ``class_path``). Supervised
fine-tuning (:class:`sslvit.eval.FineTune`) is a subclass too: it overrides :meth:`SSLMethod.batch_loss`
to use the labels, and so shares the optimizer, schedule, NaN guard and exact resume.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslvit.errors import ConfigError, NonFiniteLossError
from sslvit.nn.backbone import VisionTransformer, ViTConfig
from sslvit.optim import WarmupCosine, adamw, param_groups
from sslvit.runtime import tune_cpu_allocator
from sslvit.seeding import capture_rng_state, random_keys, restore_rng_state


class SSLMethod(L.LightningModule):
    """Base of MAE, BEiT, CPC and of fine-tuning.

    Args:
        backbone: architecture of the shared ViT (see :class:`sslvit.nn.ViTConfig`).
        base_lr: learning rate per 256 images; the optimizer uses
            ``base_lr * global_batch / 256`` with ``global_batch = batch x devices x nodes x accumulation``.
        lr: absolute learning rate; overrides ``base_lr`` scaling when set.
        weight_decay: AdamW decoupled weight decay, not applied to biases, norms, tokens, positions.
        betas: AdamW betas.
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        warmup_steps: warmup length in optimizer steps; overrides ``warmup_epochs`` when set.
        min_lr: floor of the cosine schedule.
        clip_grad: clip the global gradient norm to this value (None: no clipping).
        compile: ``torch.compile`` the model: ``true`` or ``"model"`` compiles the whole forward pass
            (encoder, decoder or heads and loss in one graph, so casts and norms fuse across blocks);
            ``"blocks"`` compiles each transformer block on its own (shorter compile). Weights and
            checkpoint keys are unchanged; the first steps are slower while it compiles.
    """

    def __init__(
        self,
        backbone: ViTConfig | None = None,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        warmup_steps: int | None = None,
        min_lr: float = 0.0,
        clip_grad: float | None = None,
        compile: bool | Literal["model", "blocks"] = False,
    ) -> None:
        super().__init__()
        config = ViTConfig.from_dict(backbone) if backbone is not None else ViTConfig()
        for key, value in (("base_lr", base_lr), ("weight_decay", weight_decay), ("min_lr", min_lr)):
            if value < 0:
                raise ConfigError(f"model.{key} must be non-negative, got {value}")
        if lr is not None and lr <= 0:
            raise ConfigError(f"model.lr must be positive when set, got {lr}")
        if compile not in (False, True, "model", "blocks"):
            raise ConfigError(f"model.compile must be false, true, 'model' or 'blocks', got {compile!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"model.betas must lie in [0, 1), got {tuple(betas)}")
        # Collects the arguments of the whole __init__ chain (the subclass's too). The backbone is
        # stored as a plain dict so that checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.hparams["backbone"] = config.to_dict()
        self.backbone_config = config
        self.backbone = VisionTransformer(config)

    # ---- what a method provides ----
    def compute_loss(self, images: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss and metrics for a batch of images [N, C, H, W]: ``{"loss": ..., <metric>: ...}``.

        ``keys`` [N] (int64, on the CPU) are the samples' random keys: a method draws its random
        choices for sample n (masks, patch augmentations) from ``keys[n]`` with
        :func:`sslvit.seeding.keyed_rand`, so they are reproducible and independent of batching.
        """
        raise NotImplementedError

    #: the backbone pooling that is this method's own evaluation feature (``--features native``)
    native_pooling: ClassVar[str] = "cls"

    def native_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> the features this method is evaluated with by default [N, native_feature_dim]:
        the backbone's ``native_pooling``; a method whose encoder sees something else overrides this (CPC)."""
        return self.backbone(images, pooling=self.native_pooling)

    @property
    def native_feature_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def input_size(self) -> int:
        """Side of the images the data module must deliver (the backbone's, unless a method says otherwise)."""
        return self.backbone_config.img_size

    #: the setting that decides :attr:`input_size`, named in error messages
    input_size_key = "model.backbone.img_size"

    # ---- steps ----
    @staticmethod
    def unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, keys) from an sslvit batch dict, or from ``(images, labels)`` with fresh random keys."""
        if isinstance(batch, dict):
            return batch["images"], batch["keys"]
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return images, random_keys(images.shape[0])

    def batch_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss and metrics of a training or validation batch: :meth:`compute_loss` of its images and keys."""
        images, keys = self.unpack(batch)
        return self.compute_loss(images, keys)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.batch_loss(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); stopped before updating the weights, so "
                "the last checkpoint is intact. Lower the learning rate, enable model.clip_grad, or use "
                "fp32/bf16 precision instead of fp16"
            )
        # sync_dist: under DDP the logged values are those of the global batch.
        self._log_metrics("train", out, on_step=True)
        # the largest rate: the head's under layer-wise decay, the only one otherwise
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups), on_step=True)
        if isinstance(batch, dict) and "skipped" in batch:  # data.skip_corrupt: unreadable images dropped
            self.log("data/skipped_images", batch["skipped"].float(), on_step=False, on_epoch=True, reduce_fx="sum")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        out = self.batch_loss(batch)  # val keys do not change across epochs: comparable val/loss
        self._log_metrics("val", out)

    def configure_model(self) -> None:
        # nn.Module.compile works in place, so parameter names and checkpoints are the same as eager ones.
        mode = self.hparams.get("compile")
        if mode and not getattr(self, "_compiled", False):
            if mode == "blocks":
                for module in self.modules():
                    if isinstance(module, Block):
                        module.compile()
            else:
                self.compile()
            self._compiled = True

    def on_fit_start(self) -> None:
        tune_cpu_allocator()

    def on_train_start(self) -> None:
        # After a resume, the optimizer holds the learning rate of the checkpoint's schedule; set it
        # from this run's schedule at the restored step (a no-op when the two agree).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                groups = scheduler.optimizer.param_groups
                for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
                    group["lr"] = base * factor(scheduler.last_epoch)

    def _log_metrics(self, stage: str, out: dict[str, torch.Tensor], **kwargs: Any) -> None:
        """Everything to the loggers; the loss (and accuracy, if any) also to the progress bar."""
        for key, value in out.items():
            shown = key in ("loss", "accuracy")
            self.log(f"{stage}/{key}", value, prog_bar=shown, sync_dist=True, **kwargs)

    # ---- exact resume: the global RNG (drop-path, dropout) travels with the checkpoint ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_state"] = capture_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_state" in checkpoint:
            restore_rng_state(checkpoint["rng_state"])
        # The schedule's shape comes from this run's settings, not the checkpoint's: a run resumed
        # with a larger max_steps continues on the longer cosine instead of staying at its end.
        for scheduler in checkpoint.get("lr_schedulers", []):
            if "lr_lambdas" in scheduler:
                scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])

    # ---- optimizer ----
    def global_batch_size(self) -> int:
        """``batch_size x devices x nodes x accumulate_grad_batches`` of the attached trainer."""
        trainer = self.trainer
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device is None:  # plain DataLoaders passed to fit()
            per_device = self._train_loader().batch_size
        return per_device * trainer.world_size * trainer.accumulate_grad_batches

    def _train_loader(self) -> Any:
        """The trainer's training loader, loading it first if the trainer has not yet."""
        if self.trainer.train_dataloader is None:
            self.trainer.fit_loop.setup_data()
        return self.trainer.train_dataloader

    def effective_lr(self) -> float:
        if self.hparams.get("lr") is not None:
            return self.hparams.lr
        return self.hparams.get("base_lr", 1.5e-4) * self.global_batch_size() / 256

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Two groups: decay for weight matrices; none for biases, norms, layer scales, tokens, positions."""
        return param_groups(self.named_parameters(), weight_decay)

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """AdamW over :meth:`param_groups`; the fused single-kernel implementation where torch has one."""
        return adamw(self.param_groups(self.hparams.get("weight_decay", 0.05)), lr, self.hparams.betas)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        total = self.trainer.estimated_stepping_batches  # also loads the training data
        if not math.isfinite(total):
            raise ConfigError(
                "the warmup + cosine schedule needs a finite length: set trainer.max_steps or trainer.max_epochs"
            )
        total = int(total)
        lr = self.effective_lr()
        optimizer = self.build_optimizer(lr)
        if h.get("warmup_steps") is not None:
            warmup = int(h.warmup_steps)
        else:
            self._train_loader()
            per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
            warmup = int(round(h.get("warmup_epochs", 0.0) * per_epoch))
        schedule = WarmupCosine(min(warmup, total), total, min_ratio=h.get("min_lr", 0.0) / lr if lr > 0 else 0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip = self.hparams.get("clip_grad") or gradient_clip_val
        if not clip:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is None and gradient_clip_algorithm != "value":
            # fp32 and bf16-mixed: the gradients are not scaled, so they are clipped as they are. Lightning's
            # own path refuses the fused AdamW under any autocast precision (it could not unscale fp16 first).
            torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        else:  # fp16 with a GradScaler: Lightning unscales, then clips
            self.clip_gradients(
                optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm"
            )

    # ---- helpers for subclasses ----
    @staticmethod
    def make_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.ModuleList:
        """Plain pre-norm transformer blocks (timm's), e.g. for a decoder."""
        return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
