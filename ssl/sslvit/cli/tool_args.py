"""Arguments and loading shared by the scripts in ``tools/`` (evaluation, figures, export).

A tool takes ``--checkpoint`` (an sslvit Lightning ``.ckpt`` or export, or weights trained elsewhere:
official MAE/BEiT/DINO, timm) and
data as ``--data-root DIR`` (an ImageFolder with ``train/`` and ``val/``) or ``--dataset NAME``
(cifar10, cifar100, stl10 from torchvision, or the offline ``digits``). The evaluation tools add
pooling, device, cache and seed (:func:`add_feature_args`) and load everything in one call
(:meth:`Evaluation.from_args`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslvit.checkpoints.loading import load_backbone
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.eval.features import FeatureCache, Features, dataset_features, default_cache_dir, feature_dim
from sslvit.nn.backbone import VisionTransformer
from sslvit.runtime import tune_cpu_allocator

# How the headline names weights trained elsewhere (load_backbone's ``source``).
OUTSIDE_SOURCES = {
    "mae": "official MAE weights",
    "beit": "BEiT weights",
    "timm": "ViT weights in timm's key names",
    "timm-hub": "timm hub folder",
}


def add_checkpoint_args(parser: argparse.ArgumentParser, random_init: bool = True, outside: bool = True) -> None:
    """``--checkpoint`` (any format :func:`~sslvit.checkpoints.load_backbone` reads), ``--random-init``, and for
    weights trained elsewhere ``--arch``/``--num-heads`` (what their shapes do not say)."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="an sslvit Lightning .ckpt or export folder, an official MAE/BEiT/DINO .pth, a timm ViT state dict "
        "(.pth/.safetensors) or a timm hub folder (config.json + model.safetensors); the format is read from the keys",
    )
    if outside:
        parser.add_argument(
            "--arch",
            help="for a plain state dict: the timm model name the weights come from (e.g. vit_small_patch16_224) or an "
            "sslvit preset (vit_tiny ... vit_huge); sizes are read from the weights' shapes",
        )
        parser.add_argument(
            "--num-heads", type=int, help="for a plain state dict: attention heads (default: from --arch, or the "
            "ViT preset of the weights' width)"
        )  # fmt: skip
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
    backbone, info = load_backbone(
        args.checkpoint, arch=getattr(args, "arch", None), num_heads=getattr(args, "num_heads", None)
    )
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


def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and data arguments, plus how features are computed and cached."""
    add_checkpoint_args(parser)
    add_data_args(parser)
    parser.add_argument(
        "--pooling", default="cls", help="cls (default), mean (of patch tokens) or cls_last<n> (e.g. cls_last4, DINO)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--cache-dir", default=None, help=f"feature cache (default $SSLVIT_CACHE/features or {default_cache_dir()})"
    )
    parser.add_argument("--no-cache", action="store_true", help="always run the backbone; store nothing")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init weights and of the probe")
    parser.add_argument("--output", help="write the results as JSON to this file")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu")
    return device


@dataclass
class Evaluation:
    """A loaded backbone with its data, device and cache, ready to encode the labelled splits."""

    args: argparse.Namespace
    backbone: VisionTransformer
    info: dict[str, Any]
    datamodule: SSLDataModule
    device: torch.device
    cache: FeatureCache | None
    seconds: dict[str, float]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Evaluation:
        torch.manual_seed(args.seed)  # --random-init weights are the same every run (and hit the cache)
        backbone, info = backbone_from_args(args)
        datamodule = datamodule_from_args(args, info)
        feature_dim(backbone, args.pooling)  # a bad --pooling fails before any image is read
        device = resolve_device(args.device)
        cache = None if args.no_cache else FeatureCache(args.cache_dir)
        return cls(args, backbone.to(device), info, datamodule, device, cache, {})

    def features(self, split: str) -> Features:
        """Features of ``train`` or ``val`` (from the cache when this checkpoint was evaluated before)."""
        start = time.perf_counter()
        result = dataset_features(
            self.backbone, self.datamodule, split, self.args.pooling, self.args.batch_size, self.device, self.cache
        )
        self.seconds[f"{split}_features"] = time.perf_counter() - start
        return result

    def describe(self, train: Features | None, val: Features) -> dict[str, Any]:
        """Settings for the JSON record: what was evaluated, on which data, how (``train`` None: not encoded)."""
        dm = self.datamodule
        return {
            "checkpoint": str(self.args.checkpoint),
            "source": self.info.get("source"),
            "random_init": bool(self.info.get("random_init", False)),
            "method": self.info.get("method"),
            "global_step": self.info.get("global_step"),
            "dataset": dm.dataset_name,
            "data_root": str(Path(dm.root).resolve()) if dm.dataset_name != "digits" else None,
            "image_size": dm.image_size,
            "pooling": self.args.pooling,
            "feature_dim": val.dim,
            "num_train": len(train) if train is not None else None,
            "num_val": len(val),
            "device": str(self.device),
            "features_from_cache": {"train": train.from_cache if train is not None else None, "val": val.from_cache},
        }

    def headline(self, train: Features | None, val: Features) -> str:
        """Two lines naming the checkpoint and the data, for the printed table."""
        what = "random init of " if self.info.get("random_init") else ""
        step = self.info.get("global_step")
        source = self.info.get("source")
        outside = f" ({OUTSIDE_SOURCES[source]})" if source in OUTSIDE_SOURCES else ""
        dm = self.datamodule
        where = f" {Path(dm.root).resolve()}" if dm.dataset_name != "digits" else ""
        timing = ", ".join(
            f"{split} " + ("from cache" if f.from_cache else f"{self.seconds[split + '_features']:.1f} s")
            for split, f in (("train", train), ("val", val))
            if f is not None
        )
        return (
            f"checkpoint: {what}{self.args.checkpoint}{outside}"
            + (f" (step {step})" if step is not None else "")
            + "\n"
            f"data: {dm.dataset_name}{where}, {f'{len(train)} train / ' if train is not None else ''}{len(val)} val "
            f"images at {dm.image_size}px; "
            f"{self.args.pooling} features ({val.dim}-d; {timing})"
        )


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
