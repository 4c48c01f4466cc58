"""Losses shared by the methods: masked pixel regression, masked token classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalize each patch vector [..., P] by its own mean and (unbiased) variance (MAE norm-pix)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only.

    pred, target: [N, L, P]; mask: [N, L] with 1 = masked. The error is averaged over the P
    values of a patch, then over the masked patches; visible patches contribute nothing.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [N, L]
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions only. logits: [N, L, V]; targets: [N, L] ids; mask: [N, L]."""
    selected = mask.bool()
    return F.cross_entropy(logits[selected].float(), targets[selected])
