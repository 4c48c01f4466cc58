"""What a tool reads, checked before any work: the checkpoint's encoder, the labelled data, the feature cache.

Each check runs before an image is encoded or a file written, and names the flag to change.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.loading import load_backbone
from sslvit.data import SSLDataModule
from sslvit.data.folders import is_unlabelled, unlabelled_message
from sslvit.data.shards import INDEX, ShardDataset
from sslvit.errors import ConfigError
from sslvit.eval.features import FeatureCache
from sslvit.nn.backbone import VisionTransformer
from sslvit.runtime import tune_cpu_allocator


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


def cache_from_args(args: argparse.Namespace) -> FeatureCache | None:
    """The feature cache of ``--cache-dir`` (checked writable), or None with ``--no-cache``."""
    if args.no_cache and args.cache_dir is not None:
        raise ConfigError("--no-cache and --cache-dir contradict each other: pass one of them")
    return None if args.no_cache else usable_cache(args.cache_dir)
