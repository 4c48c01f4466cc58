"""What a dataset holds, as a hash: the identity a cache may key on.

A name, a root or a file listing does not identify content: overwrite every image of a folder under
the same names and a cache keyed on the listing serves the old features. :func:`content_fingerprint`
hashes what would change if the encoder saw something else:

- image folders (labelled or not): every file's path, label, size and modification time (ns);
- webdataset shards: the bytes of ``index.json`` and every shard's path, size and modification time;
- torchvision's CIFAR-10/100 and STL-10: every file of their extracted folder, by size and time;
- the offline digits: their pixels and labels;
- a ``Subset``: its dataset's fingerprint and the chosen indices.

Anything else (tensors in memory, a dataset class this module does not know, shards behind URLs)
has no fingerprint, and callers must not cache it: ``None`` means "unknown", never "empty".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

TORCHVISION_BASE_FOLDERS = ("CIFAR10", "CIFAR100", "STL10")


def _stat(path: str | Path) -> list[Any]:
    """Path, size and modification time in ns (a missing file is part of the identity too)."""
    try:
        info = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), info.st_size, info.st_mtime_ns]


def _files_below(folder: Path) -> list[list[Any]]:
    return [_stat(Path(current) / name) for current, _, names in sorted(os.walk(folder)) for name in sorted(names)]


def content_fingerprint(dataset: Dataset) -> str | None:
    """SHA-256 of what ``dataset`` holds (see the module docstring), or None when it cannot be told."""
    parts = _content(dataset)
    if parts is None:
        return None
    # The labels as they are now: re-indexed by the train split's class list (sslvit.data.labels), they
    # change when train's classes change although the split's own files do not.
    base = dataset
    while isinstance(getattr(base, "dataset", None), Dataset) and not hasattr(base, "samples"):
        base = base.dataset
    labels = next((getattr(base, a) for a in ("targets", "labels") if getattr(base, a, None) is not None), None)
    classes = getattr(base, "classes", None)
    labelling = [list(map(str, classes)) if classes else None, [int(v) for v in labels] if labels is not None else None]
    return hashlib.sha256(json.dumps([parts, labelling], default=str).encode()).hexdigest()


def _content(dataset: Any) -> list[Any] | None:
    from sslvit.data.datasets import DigitsDataset
    from sslvit.data.shards import ShardDataset

    kind = type(dataset).__name__
    if isinstance(dataset, Subset):
        inner = _content(dataset.dataset)
        return None if inner is None else ["Subset", [int(i) for i in dataset.indices], inner]
    if isinstance(dataset, ShardDataset):
        if any("://" in url or url.startswith("pipe:") for url in dataset.urls):
            return None  # a remote shard's bytes are not known without reading them
        index = Path(dataset.root) / "index.json"
        digest = hashlib.sha256(index.read_bytes()).hexdigest()
        return [kind, digest, [_stat(url) for url in dataset.urls]]
    if isinstance(dataset, DigitsDataset):
        pixels = hashlib.sha256(b"".join(image.tobytes() for image in dataset.images)).hexdigest()
        return [kind, pixels, list(map(int, dataset.targets))]
    samples = getattr(dataset, "samples", None)  # ImageFolder, UnlabelledImages: (path, label) pairs
    if samples is not None and all(isinstance(s, tuple | list) and len(s) == 2 for s in samples[:1]):
        return [kind, [[*_stat(path), int(label)] for path, label in samples]]
    if type(dataset).__name__ in TORCHVISION_BASE_FOLDERS and hasattr(dataset, "base_folder"):
        folder = Path(dataset.root) / dataset.base_folder
        split = getattr(dataset, "split", getattr(dataset, "train", None))
        return [kind, split, _files_below(folder)]
    inner = getattr(dataset, "dataset", None)  # a wrapper that reads another dataset (e.g. skipping unreadable items)
    if isinstance(inner, Dataset):
        content = _content(inner)
        return None if content is None else [kind, content]
    return None
