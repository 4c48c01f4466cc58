"""Export the encoder of any sslvit checkpoint (MAE, BEiT, CPC) for timm, and check that timm agrees.

The folder holds ``model.safetensors`` (timm key names) and ``config.json`` (timm's hub format), written
by :func:`export_backbone`; decoders and heads stay behind. Load it with either::

    timm.create_model("local-dir:exported/", pretrained=True)
    timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                      pretrained_cfg_overlay=dict(file="exported/model.safetensors", custom_load=False))

(``custom_load=False``: timm before 1.0.31 would read the file with the architecture's own ``.npz``
loader; ``config.json`` says the same for ``local-dir:``.)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.loading import EXPORT_CONFIG, EXPORT_WEIGHTS, load_backbone
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.errors import ConfigError
from sslvit.nn.backbone import TIMM_ARCH, Pooling, VisionTransformer, ViTConfig
from sslvit.outputs import check_folder, replace_folder


def is_export_file(relative: Path) -> bool:
    """Whether a path (relative to an export folder) is a file :func:`export_backbone` writes."""
    return relative.as_posix() in (EXPORT_WEIGHTS, EXPORT_CONFIG)


def export_backbone(
    backbone: VisionTransformer,
    folder: str | Path,
    img_size: int | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 1.0,
    pooling: Pooling = "cls",
    overwrite: bool = False,
) -> Path:
    """Write ``model.safetensors`` (timm key names) and ``config.json`` (timm hub format) to ``folder``.

    ``img_size`` exports the encoder for another input size, with positions for that grid;
    ``mean``, ``std`` and ``crop_pct`` record the preprocessing the encoder expects; ``pooling`` is
    what timm's ``model(images)`` returns (the CLS token or the mean patch token). A ``folder`` that
    holds files (another export) is refused unless ``overwrite``; the new export then replaces it
    whole, and only once both files are written (:func:`sslvit.outputs.replace_folder`).
    """
    with replace_folder(folder, overwrite, "export", owned=is_export_file) as staging:
        _write_export(backbone, staging, img_size, mean, std, crop_pct, pooling)
    return Path(folder)


def _write_export(
    backbone: VisionTransformer,
    folder: Path,
    img_size: int | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float,
    pooling: Pooling,
) -> None:
    from safetensors.torch import save_file

    config = backbone.config
    if img_size is not None and img_size != config.img_size:
        config = ViTConfig(**{**config.to_dict(), "img_size": img_size})
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    grid = config.grid_size
    state["pos_embed"] = backbone.position_table((grid, grid)).detach().contiguous().cpu()
    save_file(state, str(folder / EXPORT_WEIGHTS))
    kwargs = config.timm_kwargs(pooling)
    meta = {
        "architecture": TIMM_ARCH[config.arch],
        "num_classes": 0,
        "num_features": backbone.num_features,
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [config.in_chans, config.img_size, config.img_size],
            "mean": list(mean),
            "std": list(std),
            "crop_pct": crop_pct,
            "interpolation": "bicubic",
            "num_classes": 0,
            "custom_load": False,  # plain safetensors: timm < 1.0.31 keeps the architecture's own (.npz) loader
        },
        "sslvit_backbone": config.to_dict(),
    }
    (folder / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def export_checkpoint(
    checkpoint: str | Path,
    folder: str | Path,
    image_size: int | None = None,
    pooling: Pooling = "cls",
    overwrite: bool = False,
) -> tuple[VisionTransformer, CheckpointInfo]:
    """Write the encoder of ``checkpoint`` to ``folder``; returns the exported backbone and its info (whose
    ``image_size`` is the size exported for, as reading the export back gives it).

    The encoder is exported at the size it is evaluated at (``image_size`` default: the checkpoint's
    evaluation size, e.g. whole images for CPC, whose encoder trains on small crops), with positions
    for that grid, and records the mean/std and crop fraction of the data it was trained on. An
    existing export in ``folder`` is replaced only with ``overwrite`` (refused before the checkpoint
    is read).
    """
    check_folder(folder, overwrite, "export", owned=is_export_file)
    backbone, info = load_backbone(checkpoint)
    size = image_size or info.image_size
    if size % backbone.patch_size:
        raise ConfigError(f"--image-size {size} is not a multiple of the patch size {backbone.patch_size}")
    export_backbone(
        backbone,
        folder,
        img_size=size,
        mean=info.mean,
        std=info.std,
        crop_pct=info.eval_crop_fraction,
        pooling=pooling,
        overwrite=overwrite,
    )
    return backbone, replace(info, image_size=size)


def timm_from_export(folder: str | Path) -> nn.Module:
    """The exported encoder built by timm from ``config.json`` and ``model.safetensors``, in eval mode."""
    import timm

    folder = Path(folder)
    config = json.loads((folder / EXPORT_CONFIG).read_text())
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / EXPORT_WEIGHTS), custom_load=False),
        **config["model_args"],
    ).eval()


@torch.no_grad()
def timm_max_difference(
    backbone: VisionTransformer, model: nn.Module, image_size: int, pooling: Pooling = "cls", count: int = 2
) -> float:
    """Largest absolute difference between the ``pooling`` features of ``backbone`` and a timm ``model``.

    Both see the same ``count`` random images of ``image_size`` pixels (seeded).
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, backbone.config.in_chans, image_size, image_size, generator=generator)
    return (backbone.eval()(images, pooling=pooling) - model(images)).abs().max().item()
