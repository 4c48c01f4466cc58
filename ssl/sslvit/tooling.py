"""Arguments and loading shared by the scripts in ``tools/`` (evaluation, figures, export).

A tool takes ``--checkpoint`` (a Lightning ``.ckpt`` of any method, or an exported folder) and
data as ``--data-root DIR`` (an ImageFolder with ``train/`` and ``val/``) or ``--dataset NAME``
(cifar10, cifar100, stl10 from torchvision, or the offline ``digits``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslvit.backbone import VisionTransformer
from sslvit.checkpoint import load_backbone
from sslvit.data import IMAGENET_MEAN, IMAGENET_STD, SSLDataModule
from sslvit.errors import ConfigError
from sslvit.runtime import tune_cpu_allocator


def add_checkpoint_args(parser: argparse.ArgumentParser, random_init: bool = True) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="Lightning .ckpt of any sslvit method, or an exported folder"
    )
    if random_init:
        parser.add_argument(
            "--random-init",
            action="store_true",
            help="keep the checkpoint's architecture but use freshly initialised weights (the usual baseline)",
        )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="an ImageFolder root holding train/ and val/ (or torchvision's data root)")
    parser.add_argument(
        "--dataset",
        choices=["imagefolder", "cifar10", "cifar100", "stl10", "digits"],
        help="default: imagefolder when --data-root is given, else digits",
    )
    parser.add_argument("--image-size", type=int, help="default: the image size the checkpoint was trained at")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)


def backbone_from_args(args: argparse.Namespace) -> tuple[VisionTransformer, dict[str, Any]]:
    """The checkpoint's encoder (eval mode); with ``--random-init`` the same architecture, untrained."""
    tune_cpu_allocator()
    backbone, info = load_backbone(args.checkpoint)
    if getattr(args, "random_init", False):
        backbone = VisionTransformer(backbone.config).eval()
        info = {**info, "random_init": True}
    return backbone, info


def datamodule_from_args(args: argparse.Namespace, info: dict[str, Any]) -> SSLDataModule:
    """An SSLDataModule for evaluation from ``--data-root``/``--dataset`` and the checkpoint's settings."""
    dataset = args.dataset or ("imagefolder" if args.data_root else "digits")
    if dataset == "imagefolder":
        if not args.data_root:
            raise ConfigError("--dataset imagefolder needs --data-root DIR with train/ and val/ sub-folders")
        missing = [s for s in ("train", "val") if not (Path(args.data_root) / s).is_dir()]
        if missing:
            raise ConfigError(
                f"--data-root {args.data_root} has no {' or '.join(s + '/' for s in missing)} folder: an ImageFolder "
                "root needs train/ and val/, each with one sub-folder per class (or pass --dataset cifar10|...)"
            )
    image_size = args.image_size or info["image_size"]
    return SSLDataModule(
        dataset=dataset,
        root=args.data_root or "data",
        image_size=image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        eval_crop_fraction=info.get("eval_crop_fraction", 1.0),
        mean=tuple(info.get("mean", IMAGENET_MEAN)),
        std=tuple(info.get("std", IMAGENET_STD)),
    )
