"""Arguments and loading shared by the scripts in ``tools/`` (evaluation, figures, export).

A tool takes ``--checkpoint`` (an sslvit Lightning ``.ckpt`` or export, or weights trained elsewhere:
official MAE/BEiT/DINO, timm) and data as ``--data-root DIR`` (an ImageFolder with ``train/`` and
``val/``) or ``--dataset NAME`` (cifar10, cifar100, stl10 from torchvision, or the offline
``digits``). The evaluation tools add features, precision, device, cache and seed
(:func:`add_feature_args`), low-shot subsets (:func:`add_subset_args`) and how settings are chosen
(:func:`add_selection_args`), and load everything in one call (:meth:`Evaluation.from_args`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.loading import load_backbone
from sslvit.data import SSLDataModule
from sslvit.data.folders import is_unlabelled, unlabelled_message
from sslvit.data.shards import INDEX, ShardDataset
from sslvit.errors import ConfigError, on_interrupt
from sslvit.eval.features import (
    FeatureCache,
    Features,
    backbone_of,
    dataset_features,
    dataset_targets,
    default_cache_dir,
    feature_dim,
    resolve_precision,
)
from sslvit.eval.subsets import low_shot_indices, mean_and_std
from sslvit.methods.loading import load_method, method_class
from sslvit.nn.backbone import VisionTransformer
from sslvit.runtime import tune_cpu_allocator

BACKBONE_POOLINGS = ("cls", "mean")
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


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: an ``--output`` folder that holds files is refused without it (``sslvit.outputs``)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an earlier {what} in --output, whole: nothing of the old one remains (without it, an --output "
        "that holds files is refused)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="an ImageFolder root holding train/ and val/ (or torchvision's data root)")
    parser.add_argument(
        "--dataset",
        choices=["imagefolder", "webdataset", "cifar10", "cifar100", "stl10", "digits"],
        help="default: imagefolder when --data-root is given, else digits",
    )
    parser.add_argument("--image-size", type=int, help="default: the image size the checkpoint was trained at")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)


def load_encoder(
    checkpoint: str | Path, arch: str | None = None, num_heads: int | None = None, random_init: bool = False
) -> tuple[VisionTransformer, CheckpointInfo]:
    """A checkpoint's encoder (eval mode) for a tool or benchmark, with the CPU allocator tuned as for every
    tool (:func:`sslvit.runtime.tune_cpu_allocator`); ``random_init``: the same architecture, untrained."""
    tune_cpu_allocator()
    backbone, info = load_backbone(checkpoint, arch=arch, num_heads=num_heads)
    if random_init:
        return VisionTransformer(backbone.config).eval(), info.untrained()
    return backbone, info


def backbone_from_args(args: argparse.Namespace) -> tuple[VisionTransformer, CheckpointInfo]:
    """The encoder of ``--checkpoint`` (``--arch``, ``--num-heads`` and ``--random-init`` where the tool has them)."""
    return load_encoder(
        args.checkpoint,
        arch=getattr(args, "arch", None),
        num_heads=getattr(args, "num_heads", None),
        random_init=getattr(args, "random_init", False),
    )


def datamodule_from_args(args: argparse.Namespace, info: CheckpointInfo) -> SSLDataModule:
    """An SSLDataModule for evaluation from ``--data-root``/``--dataset`` and the checkpoint's settings."""
    dataset = args.dataset or ("imagefolder" if args.data_root else "digits")
    if dataset in ("imagefolder", "webdataset"):
        if not args.data_root:
            raise ConfigError(f"--dataset {dataset} needs --data-root DIR with train/ and val/ sub-folders")
        root = Path(args.data_root)
        unlabelled_shards = (
            dataset == "webdataset" and (root / "train" / INDEX).is_file() and not ShardDataset(root / "train").labelled
        )
        if unlabelled_shards or dataset == "imagefolder" and (is_unlabelled(root) or is_unlabelled(root / "train")):
            raise ConfigError(unlabelled_message(root))
        missing = [s for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            raise ConfigError(
                f"--data-root {args.data_root} has no {' or '.join(s + '/' for s in missing)} folder: an ImageFolder "
                "root needs train/ and val/, each with one sub-folder per class (or pass --dataset cifar10|...)"
            )
    return info.eval_datamodule(dataset, args.data_root, args.batch_size, args.num_workers, args.image_size)


def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and data arguments, plus how features are computed and cached."""
    add_checkpoint_args(parser)
    add_data_args(parser)
    parser.add_argument(
        "--features",
        "--pooling",
        dest="features",
        default="native",
        help="native (default: the method's own feature: CLS for MAE, mean patch token for BEiT, the mean of the "
        "patch-grid latents for CPC), or a backbone pooling: cls, mean (of patch tokens), cls_last<n> (e.g. cls_last4)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto (default): bf16 autocast where the device has bf16 matrix units (CUDA, CPUs with AMX), else fp32",
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"feature cache (default $SSLVIT_CACHE/features or {default_cache_dir()})"
    )
    parser.add_argument("--no-cache", action="store_true", help="always run the backbone; store nothing")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init weights and of the probe")
    parser.add_argument("--output", help="write the results as JSON to this file")


def add_subset_args(parser: argparse.ArgumentParser) -> None:
    """Low-shot evaluation: a class-balanced, seeded part of the train split, and repeats over seeds."""
    group = parser.add_argument_group("low-shot (class-balanced, seeded)")
    group.add_argument(
        "--train-fraction", type=float, help="train on this fraction of every class of the train split (e.g. 0.01)"
    )
    group.add_argument("--shots", type=int, help="train on N images of every class")
    group.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat with seeds --seed, --seed + 1, ... (new draws of the subset, new probe initialisations) and "
        "report the mean and sample standard deviation of top-1/top-5",
    )


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """How settings are chosen: on a held-out part of the train split (default), or on val (optimistic)."""
    parser.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.1,
        help="class-balanced, seeded fraction of the train split held out to choose settings (default 0.1); the "
        "chosen setting is then retrained on the whole train split and val is evaluated once",
    )
    parser.add_argument(
        "--select-on-val",
        action="store_true",
        help="choose settings by val accuracy and report that accuracy (optimistic; only to compare with papers "
        "that did so: the output says so)",
    )


def run_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds of ``--seeds`` repeats: ``--seed``, ``--seed + 1``, ..."""
    if getattr(args, "seeds", 1) < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    return [args.seed + i for i in range(getattr(args, "seeds", 1))]


def train_subset(args: argparse.Namespace, labels: Sequence[int] | torch.Tensor, seed: int) -> list[int] | None:
    """Positions of the low-shot subset of ``--train-fraction``/``--shots`` drawn with ``seed`` (class-balanced,
    sorted), or None for the whole train split."""
    fraction, shots = getattr(args, "train_fraction", None), getattr(args, "shots", None)
    if fraction is None and shots is None:
        return None
    return low_shot_indices(labels, fraction=fraction, shots=shots, seed=seed)


def describe_subset(args: argparse.Namespace, count: int, seed: int) -> str:
    """``1% of every class (450 images, seed 0)``, for the printed headline."""
    if getattr(args, "shots", None) is not None:
        return f"{args.shots} per class ({count} images, seed {seed})"
    return f"{args.train_fraction:.3g} of every class ({count} images, seed {seed})"


def seed_record(
    args: argparse.Namespace, record: dict[str, Any], seed: int, positions: list[int] | None
) -> dict[str, Any]:
    """One seed's JSON record: ``record`` with its ``seed`` and, for a low-shot subset, ``train_subset``."""
    if positions is None:
        return {**record, "seed": seed}
    subset = {"fraction": getattr(args, "train_fraction", None), "shots": getattr(args, "shots", None)}
    return {**record, "seed": seed, "train_subset": {**subset, "num_images": len(positions)}}


def over_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """For several seeds' records: print their mean and sample standard deviation, and return what the JSON
    adds (``top1``/``top5`` become the means, ``*_std``, ``per_seed``, ``seeds``); nothing for one seed."""
    if len(records) < 2:
        return {}
    summary = mean_and_std(records)
    print(
        f"over {len(records)} seeds: top-1 {summary['top1']:.2f} +- {summary['top1_std']:.2f}, "
        f"top-5 {summary['top5']:.2f} +- {summary['top5_std']:.2f} (mean +- sample standard deviation)"
    )
    return {**summary, "per_seed": records, "seeds": [r["seed"] for r in records]}


def usable_cache(directory: str | None) -> FeatureCache:
    """The feature cache of ``--cache-dir``, after checking that it could be written, before any encoding and
    without creating anything (a refused command leaves the disk as it was): the folder, or the nearest of its
    parents that exists, must be a writable folder."""
    cache = FeatureCache(directory)
    existing = next(p for p in (cache.directory, *cache.directory.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ConfigError(
            f"--cache-dir {cache.directory} cannot be written ({existing} {what}): choose a writable folder, or pass "
            "--no-cache"
        )
    return cache


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


def resolve_features(
    args: argparse.Namespace, backbone: VisionTransformer, info: CheckpointInfo
) -> tuple[nn.Module, str, str]:
    """What ``--features`` encodes with: (the backbone or the method, the pooling to extract, its name).

    ``native`` is the method's :attr:`~sslvit.methods.base.SSLMethod.native_pooling`: a backbone pooling
    (MAE: cls, BEiT: mean), or a feature only the method computes (CPC: patch_grid), for which the
    whole method is loaded around ``backbone``. Outside weights: their source's own (BEiT mean, else cls).
    """
    if args.features != "native":
        return backbone, args.features, args.features
    if info.source != "lightning":
        return backbone, info.native_pooling, info.native_pooling
    native = method_class(info.method, str(args.checkpoint)).native_pooling
    if native in BACKBONE_POOLINGS:
        return backbone, native, native
    method, _ = load_method(args.checkpoint)
    method.backbone = backbone  # the checkpoint's encoder, or the fresh one of --random-init
    return method.eval(), "native", native


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
        model, pooling, name = resolve_features(args, backbone, info)
        feature_dim(model, pooling)  # a bad --features fails before any image is read
        device = resolve_device(args.device)
        if args.no_cache and args.cache_dir is not None:
            raise ConfigError("--no-cache and --cache-dir contradict each other: pass one of them")
        cache = None if args.no_cache else usable_cache(args.cache_dir)
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
                self.model, self.datamodule, split, self.pooling, self.args.batch_size, self.device, self.cache,
                progress=True, precision=self.precision,
            )  # fmt: skip
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


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
