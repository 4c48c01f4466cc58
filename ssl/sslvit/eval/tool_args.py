"""What ``tools/knn_eval.py`` and ``tools/linear_probe.py`` share: feature arguments, loading, JSON.

Checkpoint and data arguments come from :mod:`sslvit.tooling`; this adds pooling, device, cache
and seed, and loads everything an evaluation needs in one call.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslvit.backbone import VisionTransformer
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.eval.features import FeatureCache, Features, dataset_features, default_cache_dir, feature_dim
from sslvit.tooling import add_checkpoint_args, add_data_args, backbone_from_args, datamodule_from_args


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
        dm = self.datamodule
        where = f" {Path(dm.root).resolve()}" if dm.dataset_name != "digits" else ""
        timing = ", ".join(
            f"{split} " + ("from cache" if f.from_cache else f"{self.seconds[split + '_features']:.1f} s")
            for split, f in (("train", train), ("val", val))
            if f is not None
        )
        return (
            f"checkpoint: {what}{self.args.checkpoint}" + (f" (step {step})" if step is not None else "") + "\n"
            f"data: {dm.dataset_name}{where}, {f'{len(train)} train / ' if train is not None else ''}{len(val)} val "
            f"images at {dm.image_size}px; "
            f"{self.args.pooling} features ({val.dim}-d; {timing})"
        )


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
