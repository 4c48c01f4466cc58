"""Export the encoder of any sslvit checkpoint (MAE, BEiT, CPC) for timm, and check that timm agrees.

The folder holds ``model.safetensors`` (timm key names) and ``config.json`` (timm's hub format), written
by :func:`sslvit.checkpoint.export_backbone`; decoders and heads stay behind. Load it with either::

    timm.create_model("local-dir:exported/", pretrained=True)
    timm.create_model(config["architecture"], pretrained=True,
                      pretrained_cfg_overlay=dict(file="exported/model.safetensors"), **config["model_args"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.backbone import VisionTransformer
from sslvit.checkpoint import EXPORT_CONFIG, EXPORT_WEIGHTS, export_backbone, load_backbone
from sslvit.data import IMAGENET_MEAN, IMAGENET_STD
from sslvit.errors import ConfigError


def export_checkpoint(
    checkpoint: str | Path, folder: str | Path, image_size: int | None = None
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Write the encoder of ``checkpoint`` to ``folder``; returns the exported backbone and its info.

    The encoder is exported at the size it is evaluated at (``image_size`` default: the checkpoint's
    evaluation size, e.g. whole images for CPC, whose encoder trains on small crops), with positions
    for that grid, and records the mean/std and crop fraction of the data it was trained on.
    """
    backbone, info = load_backbone(checkpoint)
    size = image_size or info["image_size"]
    if size % backbone.patch_size:
        raise ConfigError(f"--image-size {size} is not a multiple of the patch size {backbone.patch_size}")
    export_backbone(
        backbone,
        folder,
        img_size=size,
        mean=tuple(info.get("mean", IMAGENET_MEAN)),
        std=tuple(info.get("std", IMAGENET_STD)),
        crop_pct=info.get("eval_crop_fraction", 1.0),
    )
    return backbone, {**info, "export_image_size": size}


def timm_from_export(folder: str | Path) -> nn.Module:
    """The exported encoder built by timm from ``config.json`` and ``model.safetensors``, in eval mode."""
    import timm

    folder = Path(folder)
    config = json.loads((folder / EXPORT_CONFIG).read_text())
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / EXPORT_WEIGHTS)),
        **config["model_args"],
    ).eval()


@torch.no_grad()
def timm_max_difference(backbone: VisionTransformer, model: nn.Module, image_size: int, count: int = 2) -> float:
    """Largest absolute difference between the pooled features of ``backbone`` and a timm ``model``.

    Both see the same ``count`` random images of ``image_size`` pixels (seeded).
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, backbone.config.in_chans, image_size, image_size, generator=generator)
    return (backbone.eval()(images) - model(images)).abs().max().item()
