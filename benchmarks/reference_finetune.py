"""facebookresearch/mae's fine-tuning step, for ``benchmarks/train_step.py --reference-mae PATH`` on a FineTune config.

The classifier of ``models_vit.py`` with the sizes and weights of the sslvit model, and one training
step as ``main_finetune.py`` and ``engine_finetune.py`` run it: timm's Mixup on the batch, the forward
pass, SoftTargetCrossEntropy, ``loss.item()``, backward through MAE's gradient scaler (which also
computes the gradient norm), AdamW over ``util.lr_decay.param_groups_lrd`` groups. Two shims let the
code of 2021 run today, without changing what it computes: timm 0.3's explicit attention and
``forward`` (features, then head), and ``torch._six.inf`` for ``util/misc.py``.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy


def import_official(path: str):
    """models_vit, util.lr_decay and util.misc of the checkout at ``path``."""
    if "torch._six" not in sys.modules:  # removed from torch in 2.0; util/misc.py imports `inf` from it
        sys.modules["torch._six"] = types.SimpleNamespace(inf=math.inf)
    sys.path.insert(0, str(Path(path).resolve()))
    import models_vit
    import util.lr_decay
    import util.misc

    return models_vit, util.lr_decay, util.misc


class OfficialFineTune:
    """MAE's fine-tuning model and step, with the sizes, weights and recipe of an sslvit ``FineTune``."""

    def __init__(self, path: str, model, images: torch.Tensor, labels: torch.Tensor) -> None:
        models_vit, lr_decay, misc = import_official(path)
        h, cfg = model.hparams, model.backbone_config
        dim, depth, heads = cfg.dims
        mean_pooling = h.pooling == "mean"

        class ReferenceViT(models_vit.VisionTransformer):
            def forward(self, x):  # timm 0.3: features (pooled by MAE's forward_features), then the head
                return self.head(self.forward_features(x))

        self.model = ReferenceViT(
            global_pool=mean_pooling,
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            norm_layer=models_vit.partial(torch.nn.LayerNorm, eps=1e-6),
            num_classes=h.num_classes,
            drop_path_rate=cfg.drop_path_rate,
        ).to(images.device)
        for block in self.model.blocks:
            block.attn.fused_attn = False  # timm 0.3 computed attention explicitly
        state = {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}
        if mean_pooling:
            state.pop("norm.weight"), state.pop("norm.bias")  # MAE deletes the final norm with global pooling
        self.model.load_state_dict(state)
        self.model.train()
        self.mixup = Mixup(
            mixup_alpha=h.mixup,
            cutmix_alpha=h.cutmix,
            prob=h.mixup_prob,
            switch_prob=h.mixup_switch_prob,
            mode="batch",
            label_smoothing=h.label_smoothing,
            num_classes=h.num_classes,
        )
        self.criterion = SoftTargetCrossEntropy()
        groups = lr_decay.param_groups_lrd(
            self.model, h.weight_decay, no_weight_decay_list=self.model.no_weight_decay(), layer_decay=h.layer_decay
        )
        self.optimizer = torch.optim.AdamW(groups, lr=1e-4)
        self.loss_scaler = misc.NativeScalerWithGradNormCount()
        self.images, self.labels = images, labels

    def loss(self) -> torch.Tensor:
        samples, targets = self.mixup(self.images.clone(), self.labels)
        return self.criterion(self.model(samples), targets)

    def step(self) -> None:
        """engine_finetune.train_one_epoch's body for one batch (accum_iter 1, no clipping)."""
        loss = self.loss()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"reference loss is {loss_value}")
        self.loss_scaler(loss, self.optimizer, clip_grad=None, parameters=self.model.parameters())
        self.optimizer.zero_grad()

    @torch.no_grad()
    def logits_check(self, model) -> dict[str, float]:
        """Both classifiers on the same images in eval mode: the largest difference of their logits."""
        model.eval(), self.model.eval()
        difference = (model(self.images) - self.model(self.images)).abs().max().item()
        model.train(), self.model.train()
        return {"max_abs_logit_diff": difference}
