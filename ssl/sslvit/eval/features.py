"""Features of a frozen backbone over a dataset: the one extraction behind kNN, the linear probe and the
online callbacks.

- :func:`extract_features` runs :func:`sslvit.eval.encode.encode` over a dataset in order; under
  ``torch.distributed`` every rank encodes one contiguous shard and the gathered result is in
  dataset order, each image once.
- :class:`FeatureCache` stores results on disk under a key made of the weights' content hash, the
  dataset (files, transform, split), the pooling and the precision, so evaluating the same
  checkpoint again does not run the backbone.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sslvit.data.identity import content_fingerprint
from sslvit.distributed import all_true, gather_in_order, rank_and_world
from sslvit.eval.encode import (  # noqa: F401  (encode, frozen, ... are part of this module's interface)
    Precision,
    backbone_of,
    encode,
    feature_dim,
    frozen,
    last_blocks,
    resolve_precision,
)
from sslvit.nn.backbone import VisionTransformer

# 3: datasets are identified by content (file sizes and times, label map), not by their file listing,
# which served stale features after images were replaced under the same names (format 2). 2: the
# caller's tag lives under its own key; in format 1 its "dataset" name replaced the description.
CACHE_FORMAT = 3


@dataclass
class Features:
    """Pooled features ``[N, F]`` (float32, CPU) and their labels ``[N]`` (int64), in dataset order."""

    features: torch.Tensor
    labels: torch.Tensor
    from_cache: bool = False

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def subset(self, positions: Sequence[int]) -> Features:
        """The rows at ``positions`` (e.g. a low-shot subset or a held-out part), in that order."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return Features(self.features[index], self.labels[index], self.from_cache)


# ---- identity of what is encoded -----------------------------------------------------------------
def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, bytes): identical weights, identical hash."""
    digest = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None) or getattr(module, "hparams", None)  # a backbone's, or a method's
    if config is not None:
        digest.update(repr(config).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _unwrap(dataset: Dataset) -> Dataset:
    while hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):  # SkipCorrupt and similar wrappers
        dataset = dataset.dataset
    return dataset


def dataset_targets(dataset: Dataset) -> list[int]:
    """Class labels of a labelled dataset without decoding its images (ImageFolder, CIFAR, STL-10, digits)."""
    base = _unwrap(dataset)
    targets = getattr(base, "targets", None)
    if targets is None:
        targets = getattr(base, "labels", None)
    if targets is None:
        raise ValueError(f"{type(base).__name__} exposes no 'targets' or 'labels'; cannot choose a labelled subset")
    return [int(t) for t in targets]


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset for caching: type, size, root, transform, label map and content
    (:func:`sslvit.data.identity.content_fingerprint`: files by size and modification time, shards, pixels).

    A dataset whose content cannot be told (tensors in memory, an unknown dataset class, remote shards)
    has ``content`` None: :func:`is_identified` says so, and its features are never cached.
    """
    base = _unwrap(dataset)
    root = getattr(base, "root", None)
    return {
        "type": type(base).__name__,
        "size": len(dataset),
        "root": os.path.abspath(root) if root else None,
        "transform": repr(getattr(base, "transform", None)),
        "content": content_fingerprint(dataset),
    }


def is_identified(description: dict[str, Any]) -> bool:
    """Whether a :func:`describe_dataset` result pins down the content (its fingerprint is known)."""
    return description["content"] is not None


def feature_key(
    backbone: VisionTransformer,
    dataset: Dataset,
    pooling: str,
    device: torch.device,
    indices: Sequence[int] | None = None,
    tag: dict[str, Any] | None = None,
    precision: Precision = "auto",
) -> dict[str, Any]:
    """The cache key of one extraction (a JSON-serialisable dict).

    What identifies the content (weights, the dataset's description, indices, pooling, precision) is
    computed here; ``tag`` (caller-known names such as the split) is added under its own ``"tag"``
    entry, so it can only make the key longer, never replace a part of it.
    """
    chosen = None if indices is None else hashlib.sha256(json.dumps(list(map(int, indices))).encode()).hexdigest()
    return {
        "format": CACHE_FORMAT,
        "weights": weights_fingerprint(backbone),
        "dataset": describe_dataset(dataset),
        "indices": chosen,
        "pooling": pooling,
        "precision": resolve_precision(precision, device),
        "tag": dict(tag or {}),
    }


def default_cache_dir() -> Path:
    """``$SSLVIT_CACHE`` or ``~/.cache/sslvit``, with ``features/`` below it."""
    return Path(os.environ.get("SSLVIT_CACHE", Path.home() / ".cache" / "sslvit")) / "features"


class FeatureCache:
    """Features on disk, one ``<sha256 of key>.pt`` file per extraction (loaded with ``weights_only=True``)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: dict[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True)
        return self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.pt"

    def load(self, key: dict[str, Any]) -> Features | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged entry (disk full, a copy cut short) is a miss, re-encoded and replaced
            warnings.warn(
                f"feature cache entry {path} cannot be read ({type(err).__name__}); encoding again", stacklevel=2
            )
            return None
        if not isinstance(stored, dict) or stored.get("key") != json.dumps(key, sort_keys=True):
            return None
        return Features(stored["features"], stored["labels"], from_cache=True)

    def save(self, key: dict[str, Any], features: Features) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        record = {"key": json.dumps(key, sort_keys=True), "features": features.features, "labels": features.labels}
        try:
            torch.save(record, partial)
            os.replace(partial, path)  # atomic: a reader never sees half a file
        except BaseException:  # Ctrl-C or a full disk mid-write: no partial file is left behind
            partial.unlink(missing_ok=True)
            raise
        return path


# ---- the whole dataset, possibly over several processes -------------------------------------------
def extract_features(
    backbone: VisionTransformer,
    loader: DataLoader,
    pooling: str = "cls",
    device: torch.device | str | None = None,
    indices: Sequence[int] | None = None,
    cache: FeatureCache | None = None,
    cache_tag: dict[str, Any] | None = None,
    progress: str | None = None,
    precision: Precision = "auto",
) -> Features:
    """Features of ``loader.dataset`` (or of ``indices`` into it), in dataset order.

    ``backbone``: the ViT, or a method when ``pooling="native"`` (see :func:`encode`).

    ``loader`` supplies the dataset, batch size, workers and collate function; its sampler is not
    used: every rank encodes the contiguous shard ``[rank * M / W, (rank + 1) * M / W)`` in order and
    the shards are gathered, so the result is the same as in one process. The loader draws its seeds
    from a private generator: extraction never advances the global RNG (training is unchanged by it).
    With ``cache``, a stored result for the same key is returned without running the backbone;
    ``cache_tag`` adds caller-known identity (dataset name, split) to the key. ``progress``: a
    description for a progress bar (tqdm's, on rank 0: images, images/s, time left).
    ``precision``: ``auto`` (bf16 autocast on bf16 matrix units, else fp32), ``fp32`` or ``bf16``.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    dim = feature_dim(backbone, pooling)  # also validates the pooling before any work
    dataset = loader.dataset
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    precision = resolve_precision(precision, device)
    if cache is not None and not is_identified(describe_dataset(dataset)):
        cache = None  # two such datasets of one size would share a key: encode instead
    key = feature_key(backbone, dataset, pooling, device, indices, cache_tag, precision) if cache is not None else None
    if cache is not None:
        stored = cache.load(key)
        if all_true(stored is not None):
            return stored

    rank, world = rank_and_world()
    shard = order[rank * len(order) // world : (rank + 1) * len(order) // world]
    shard_loader = DataLoader(
        Subset(dataset, shard),
        batch_size=loader.batch_size or 256,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=torch.Generator().manual_seed(0),
    )
    chunks, labels = [torch.empty(0, dim, device=device)], [torch.empty(0, dtype=torch.long)]
    bar = tqdm(total=len(order), desc=progress, unit="img", disable=progress is None or rank != 0, dynamic_ncols=True)
    with frozen(backbone), bar:
        for batch in shard_loader:  # (images, labels) or (images, labels, num_skipped)
            chunks.append(encode(backbone, batch[0].to(device, non_blocking=True), pooling, precision))
            labels.append(torch.as_tensor(batch[1], dtype=torch.long))
            bar.update(len(batch[1]) * world)  # every rank encodes a batch of about this size meanwhile
    features, targets = torch.cat(chunks), torch.cat(labels)
    if world > 1:
        features, targets = gather_in_order(features), gather_in_order(targets)
    result = Features(features.cpu(), targets.cpu())
    if cache is not None and rank == 0:
        cache.save(key, result)
    return result


def dataset_features(
    backbone: VisionTransformer,
    datamodule: Any,
    split: str,
    pooling: str = "cls",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    cache: FeatureCache | None = None,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    precision: Precision = "auto",
    require_labels: bool = True,
) -> Features:
    """Features of a split (``train`` or ``val``; ``pretrain`` too) of an :class:`~sslvit.data.SSLDataModule`,
    with its deterministic evaluation transform (resize + center crop); ``progress`` shows a bar. A split
    without labels is refused unless ``require_labels`` is False (its labels are then -1)."""
    loader = datamodule.eval_dataloader(split, batch_size, require_labels)
    tag = {"dataset": datamodule.dataset_name, "split": split, "image_size": datamodule.image_size}
    description = f"{split} features" if progress else None
    return extract_features(backbone, loader, pooling, device, indices, cache, tag, description, precision)
