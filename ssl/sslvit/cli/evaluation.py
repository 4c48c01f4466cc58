"""One evaluation of a checkpoint's frozen encoder, loaded from the tools' flags in one call: the model, its
data, device and cache, the features of the labelled splits, and the headline and JSON settings that
report what was evaluated.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.cli.device_and_features import resolve_device, resolve_features
from sslvit.cli.low_shot import run_seeds, train_subset
from sslvit.cli.tool_inputs import backbone_from_args, cache_from_args, datamodule_from_args
from sslvit.data import SSLDataModule
from sslvit.errors import on_interrupt
from sslvit.eval.features import (
    FeatureCache,
    Features,
    backbone_of,
    dataset_features,
    dataset_targets,
    feature_dim,
    resolve_precision,
)
from sslvit.nn.backbone import VisionTransformer

# How the headline names weights trained elsewhere (CheckpointInfo.source).
OUTSIDE_SOURCES = {
    "mae": "official MAE weights",
    "beit": "BEiT weights",
    "timm": "ViT weights in timm's key names",
    "timm-hub": "timm hub folder",
}


@dataclass
class Evaluation:
    """A loaded backbone (or method, for native features) with its data, device and cache, ready to encode
    the labelled splits. ``pooling`` goes to the extraction; ``feature_name`` says what it is."""

    args: argparse.Namespace
    model: nn.Module
    info: CheckpointInfo
    datamodule: SSLDataModule
    device: torch.device
    cache: FeatureCache | None
    seconds: dict[str, float]
    pooling: str = "cls"
    feature_name: str = "cls"
    #: train classes that val has no image of (labels are matched by name; accuracy is over the others)
    missing_classes: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Evaluation:
        torch.manual_seed(args.seed)  # --random-init weights are the same every run (and hit the cache)
        backbone, info = backbone_from_args(args)
        datamodule = datamodule_from_args(args, info)
        model, pooling, name = resolve_features(args.features, args.checkpoint, backbone, info)
        feature_dim(model, pooling)  # a bad --features fails before any image is read
        device = resolve_device(args.device)
        cache = cache_from_args(args)
        evaluation = cls(args, model.to(device), info, datamodule, device, cache, {}, pooling, name)
        # Before any image is encoded: val's classes against train's (by name), and --seeds, --train-fraction,
        # --shots on the train labels.
        evaluation.missing_classes = getattr(datamodule.build_dataset("val", None), "missing_classes", [])
        evaluation.train_subsets()
        return evaluation

    def train_labels(self) -> torch.Tensor:
        """The train split's labels (train's class list), from the listing alone: no image is decoded."""
        if not hasattr(self, "_train_labels"):
            train = self.datamodule.build_dataset("train", None)
            self._train_labels = torch.tensor(dataset_targets(train), dtype=torch.long)
        return self._train_labels

    def train_subsets(self) -> dict[int, list[int] | None]:
        """Each seed of ``--seeds`` -> the positions of its low-shot train subset (None: the whole split)."""
        if not hasattr(self, "_train_subsets"):
            seeds = run_seeds(self.args)
            args = self.args
            low_shot = getattr(args, "train_fraction", None) is not None or getattr(args, "shots", None) is not None
            labels = self.train_labels() if low_shot else None
            self._train_subsets = {seed: train_subset(args, labels, seed) if low_shot else None for seed in seeds}
        return self._train_subsets

    @property
    def backbone(self) -> VisionTransformer:
        return backbone_of(self.model)

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``, as ``--precision`` resolves on this device."""
        return resolve_precision(getattr(self.args, "precision", "auto"), self.device)

    def features(self, split: str) -> Features:
        """Features of ``train`` or ``val`` (from the cache when this checkpoint was evaluated before)."""
        start = time.perf_counter()
        kept = (
            "no feature was cached (--no-cache)"
            if self.cache is None
            else f"the feature cache {self.cache.directory} holds only whole entries (a rerun reuses the splits "
            "encoded before)"
        )
        with on_interrupt(kept):  # FeatureCache.save writes each entry whole or not at all
            result = dataset_features(
                self.model,
                self.datamodule,
                split,
                self.pooling,
                self.args.batch_size,
                self.device,
                self.cache,
                progress=True,
                precision=self.precision,
            )
        self.seconds[f"{split}_features"] = time.perf_counter() - start
        return result

    def describe(self, train: Features | None, val: Features) -> dict[str, Any]:
        """Settings for the JSON record: what was evaluated, on which data, how (``train`` None: not encoded)."""
        dm = self.datamodule
        return {
            "checkpoint": str(self.args.checkpoint),
            "source": self.info.source,
            "random_init": self.info.random_init,
            "method": self.info.method,
            "global_step": self.info.global_step,
            "dataset": dm.dataset_name,
            "data_root": str(Path(dm.root).resolve()) if dm.dataset_name != "digits" else None,
            "image_size": dm.image_size,
            "features": self.args.features,
            "pooling": self.feature_name,
            "feature_dim": val.dim,
            "num_train": len(train) if train is not None else None,
            "num_val": len(val),
            "device": str(self.device),
            "precision": self.precision,
            "features_from_cache": {"train": train.from_cache if train is not None else None, "val": val.from_cache},
            "val_missing_classes": list(self.missing_classes),
        }

    def headline(self, train: Features | None, val: Features) -> str:
        """Two lines naming the checkpoint and the data, for the printed table."""
        what = "random init of " if self.info.random_init else ""
        step = self.info.global_step
        source = self.info.source
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
            f"{self.describe_features()} ({val.dim}-d, {self.precision}; {timing})" + self.missing_note()
        )

    def missing_note(self) -> str:
        """A line saying which train classes val has no image of (accuracy is over the others), or nothing."""
        missing = self.missing_classes
        if not missing:
            return ""
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        return f"\nnote: val has no images of {len(missing)} train class(es) ({shown}): accuracy is over the others"

    def describe_features(self) -> str:
        """``native features (patch_grid)`` or ``mean features``."""
        if self.args.features == "native":
            return f"native features ({self.feature_name})"
        return f"{self.feature_name} features"
