"""The optimizer recipe every trainer here shares: parameter groups, AdamW, warmup then cosine.

Used by the pretraining methods, the linear probe and fine-tuning (which adds layer-wise learning-rate
decay); one rule decides weight decay everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

# Parameters that are not weight matrices but still have more than one dimension.
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: weight matrices yes; biases, norms, layer scales, tokens, positions no."""
    return param.ndim > 1 and not name.endswith(NO_DECAY_NAMES)


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups by :func:`decays`; frozen parameters (``requires_grad=False``) are left out."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def vit_layer_id(name: str, depth: int, prefix: str = "backbone.") -> int:
    """Layer of a parameter for layer-wise lr decay (BEiT, MAE): 0 for the patch embedding, CLS token and
    positions, ``i + 1`` for block i, ``depth + 1`` for everything after the blocks (norms, head).

    ``prefix`` is where the ViT sits in the model (``backbone.blocks.3.mlp.fc1.weight``: block 3).
    """
    if not name.startswith(prefix):
        return depth + 1
    name = name[len(prefix) :]
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay: one per (layer, decay or not), timm's ``param_groups_layer_decay``.

    ``model.group_matcher()`` gives each parameter's layer (e.g. :func:`vit_layer_id`); a group's
    ``lr_scale`` is ``layer_decay ** (last layer - layer)``, so the head trains at the full rate and
    the patch embedding at ``layer_decay ** (depth + 1)``. Weight decay follows :func:`decays`;
    frozen parameters are left out.
    """
    no_decay_patterns = [f"*{name}" for name in NO_DECAY_NAMES]  # besides every parameter of one dimension
    return param_groups_layer_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=no_decay_patterns, layer_decay=layer_decay
    )


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW, the fused single-kernel implementation where torch has one for the parameters' device.

    A group with an ``lr_scale`` (layer-wise decay) trains at ``lr * lr_scale``.
    """
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


class WarmupCosine:
    """Learning-rate factor per optimizer step: linear warmup, then cosine decay to ``min_ratio``.

    A plain object (not a lambda) so that LambdaLR can save and restore its state.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, max(total_steps, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
