"""WebDataset tar shards: written from an image folder, read by index, ordered for locality.

Layout of a shard root (what ``tools/make_shards.py`` writes)::

    SHARDS/train/shard-000000.tar ...   each sample: <key>.jpg (the file's bytes, not re-encoded),
    SHARDS/train/index.json             <key>.cls (its label, when labelled), <key>.src (its path)
    SHARDS/val/...                      (val/ only when the source had one)

``index.json`` is webdataset's ``wids`` descriptor (``shardlist`` of ``{url, nsamples, filesize}``)
plus an ``sslvit`` entry with the class names and every sample's label, so labels are known
without opening a shard. Samples are read by index with webdataset's indexed reader (``wids``:
memory-mapped tars, members located by their headers), which makes a shard dataset an ordinary
map-style dataset: the keyed sampler, exact resume and ``skip_corrupt`` work as for an ImageFolder.

:class:`ShardSampler` keeps reads local: each epoch visits the shards in a seeded random order and
the samples of each shard in a seeded random order; rank r trains on the r-th contiguous slice of
that order, so every rank reads its own run of shards (only the two shards at a slice's ends are
shared with the neighbouring rank). Loader workers take whole batches, which lie in one or two
shards; each sample's bytes are read once.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, Subset

from sslvit.data.datasets import ImageFolder
from sslvit.data.decode import DECODE_ERRORS, EncodedImage, to_rgb8, unreadable
from sslvit.data.folders import image_files, is_unlabelled, split_folder
from sslvit.data.sampling import KeyedSampler
from sslvit.errors import CorruptImageError, DatasetUnavailableError
from sslvit.outputs import replace_folder

INDEX = "index.json"
SHARD_PATTERN = "shard-%06d.tar"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


# ---- writing ----------------------------------------------------------------------------------------
SHARD_FILE = re.compile(r"shard-\d{6,}\.tar|" + re.escape(INDEX))  # what a split's folder holds


def is_split_file(relative: Path) -> bool:
    """Whether a path (relative to a split's folder) is a file that :func:`write_shards` writes."""
    return SHARD_FILE.fullmatch(relative.as_posix()) is not None


def is_shard_set_file(relative: Path) -> bool:
    """Whether a path (relative to a shard root) is a file that :func:`shard_image_folder` writes."""
    return len(relative.parts) == 2 and relative.parts[0] in ("train", "val") and is_split_file(Path(relative.name))


def write_shards(
    samples: Sequence[tuple[str, int | None]],
    output: str | Path,
    classes: Sequence[str] | None = None,
    samples_per_shard: int = 1000,
    max_shard_bytes: float = 1e9,
    progress: Callable[[Iterable], Iterable] = iter,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``(image path, label or None)`` pairs, in the given order, as tar shards + ``index.json``.

    The image files' bytes are stored as they are (a JPEG stays the same JPEG). Sample ``i`` gets
    the key ``%09d`` of ``i``; its position in the shards is its dataset index. Returns the index.
    An ``output`` that holds files is refused unless ``overwrite``, and then replaced whole once the
    new shards are complete (see :func:`sslvit.outputs.replace_folder`): no shard of an older set
    is left next to the new index.
    """
    output = Path(output)
    with replace_folder(output, overwrite, "shard split", owned=is_split_file) as staging:
        return _write_split(samples, staging, output.name, classes, samples_per_shard, max_shard_bytes, progress)


def _write_split(
    samples: Sequence[tuple[str, int | None]],
    folder: Path,
    name: str,
    classes: Sequence[str] | None = None,
    samples_per_shard: int = 1000,
    max_shard_bytes: float = 1e9,
    progress: Callable[[Iterable], Iterable] = iter,
) -> dict[str, Any]:
    """:func:`write_shards` into the empty ``folder``, the index named ``name`` (the folder it will become)."""
    import webdataset as wds

    shards: list[dict[str, Any]] = []

    def finished(path: str) -> None:  # called by ShardWriter after closing each shard
        shards.append({"url": Path(path).name, "nsamples": writer.count, "filesize": Path(path).stat().st_size})

    labels = [label for _, label in samples]
    labelled = all(label is not None for label in labels)
    writer = wds.ShardWriter(
        str(folder / SHARD_PATTERN), maxcount=samples_per_shard, maxsize=max_shard_bytes, post=finished, verbose=0
    )
    with writer:
        for index, (path, label) in enumerate(progress(samples)):
            suffix = Path(path).suffix.lower()
            image_ext = "jpg" if suffix in (".jpg", ".jpeg") else suffix[1:]
            sample = {"__key__": f"{index:09d}", image_ext: Path(path).read_bytes(), "src": str(path).encode()}
            if labelled:
                sample["cls"] = int(label)
            writer.write(sample)
    index = {
        "wids_version": 1,
        "name": name,
        "shardlist": shards,
        "sslvit": {"classes": list(classes) if classes else None, "labels": labels if labelled else None},
    }
    (folder / INDEX).write_text(json.dumps(index))
    return index


def _split_samples(folder: Path, shuffle_seed: int | None) -> tuple[list[tuple[str, int | None]], list[str] | None]:
    """A split's ``(path, label or None)`` pairs and class names (None: unlabelled), shuffled with a seed."""
    if is_unlabelled(folder):
        samples, classes = [(str(path), None) for path in image_files(folder)], None
    else:
        found = ImageFolder(str(folder), loader=str)  # lists files and classes (no symlink loops), decodes nothing
        samples, classes = [(path, label) for path, label in found.samples], found.classes
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(samples)
    return samples, classes


def shard_image_folder(
    data_root: str | Path,
    output: str | Path,
    samples_per_shard: int = 1000,
    seed: int | None = 0,
    progress: Callable[..., Iterable] | None = None,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write ``output/<split>/`` shards of every split of an image folder; returns each split's index.

    Labelled roots have ``train/<class>/`` and ``val/<class>/``; a folder of image files (or a
    ``train/`` of them) is written unlabelled. Training samples are shuffled once with ``seed``
    (None keeps the folder's order), so that every shard is a random sample of the classes; val
    keeps its order. ``progress(iterable, desc=..., total=...)`` wraps the writing loop (e.g. tqdm).
    An ``output`` that holds files is refused unless ``overwrite`` (and then only an earlier shard
    set); the new set replaces it whole once every split is written, so no shard or split of the
    old set remains and an interrupted run leaves ``output`` as it was.
    """
    root, written = Path(data_root), {}
    splits = [("train", split_folder(root, "pretrain")), ("val", split_folder(root, "val"))]
    with replace_folder(output, overwrite, "shard set", owned=is_shard_set_file) as staging:
        for split, folder in splits:
            if folder is None:
                continue
            samples, classes = _split_samples(folder, shuffle_seed=seed if split == "train" else None)
            wrap = functools.partial(progress, desc=split, total=len(samples)) if progress else iter
            (staging / split).mkdir()
            written[split] = _write_split(samples, staging / split, split, classes, samples_per_shard, progress=wrap)
    return written


# ---- reading ----------------------------------------------------------------------------------------
class ShardDataset(Dataset):
    """The samples of one split's shards (``<root>/index.json``): item i -> ``(transform(image), label)``.

    Images are handed to ``transform`` as lazily opened PIL images (not decoded yet, so a transform
    may decode at reduced size). Unlabelled shards give label -1 (``labelled`` is False). A sample
    that cannot be read raises :class:`~sslvit.errors.CorruptImageError` naming the shard and key.

    Shards are local paths (a shared file system is fine: they are memory-mapped) or URLs that
    ``wids`` downloads into ``cache_dir`` the first time a sample of theirs is read (``s3://``,
    ``https://``, ``pipe:CMD``); ``open_shards`` stay open per loader worker.
    """

    def __init__(
        self, root: str | Path, transform: Callable | None = None, cache_dir: str | None = None, open_shards: int = 4
    ) -> None:
        self.root, self.transform = str(root), transform
        index_path = Path(root) / INDEX
        if not index_path.is_file():
            raise DatasetUnavailableError(
                f"webdataset shards: {index_path} does not exist. Write shards with "
                "`python tools/make_shards.py --data-root IMAGES --output SHARDS` and pass --data.root SHARDS"
            )
        index = json.loads(index_path.read_text())
        self.urls = [_resolve(shard["url"], Path(root)) for shard in index["shardlist"]]
        self.sizes = [int(shard["nsamples"]) for shard in index["shardlist"]]
        self.filesizes = [shard.get("filesize") for shard in index["shardlist"]]
        self.starts = list(itertools.accumulate(self.sizes, initial=0))
        meta = index.get("sslvit") or {}
        self.classes = meta.get("classes") or []
        self.labelled = meta.get("labels") is not None
        self.targets = list(meta["labels"]) if self.labelled else [-1] * self.starts[-1]
        self.cache_dir, self.open_shards = cache_dir, open_shards
        self._open: OrderedDict[int, Any] = OrderedDict()  # shard number -> wids IndexedTarSamples

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, position in the shard) of sample i."""
        shard = bisect.bisect_right(self.starts, i) - 1
        return shard, i - self.starts[shard]

    def _shard(self, number: int) -> Any:
        from wids.wids import IndexedTarSamples

        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        url = self.urls[number]
        if "://" in url or url.startswith("pipe:"):
            from wids.wids_dl import download_and_open

            cache = Path(self.cache_dir or Path(tempfile.gettempdir()) / "sslvit-shards")
            cache.mkdir(parents=True, exist_ok=True)
            # keyed by what the index says the shard is (URL and size), so a rewritten shard set is a miss
            identity = f"{url}|{self.filesizes[number]}"
            local = cache / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}-{Path(url).name}"
            with download_and_open(url, str(local)) as stream:
                shard = IndexedTarSamples(path=str(local), stream=stream, expected_size=self.sizes[number])
        else:
            if not Path(url).is_file():
                raise DatasetUnavailableError(f"webdataset shard {url} is missing; rewrite the shards")
            shard = IndexedTarSamples(path=url, expected_size=self.sizes[number])
        self._open[number] = shard
        if len(self._open) > self.open_shards:
            self._open.popitem(last=False)[1].close()
        return shard

    def __getitem__(self, i: int) -> tuple[Any, int]:
        number, position = self.locate(i)
        where = f"shard {self.urls[number]}"
        try:
            sample = self._shard(number)[position]
        except (AssertionError, IndexError, ValueError, OSError) as err:  # wids checks sizes with assert
            raise CorruptImageError(
                f"{where} cannot give its sample {position} ({type(err).__name__}: {err}): the shard is truncated "
                "or damaged. Rewrite it with tools/make_shards.py, or set `data.skip_corrupt: true` to skip "
                "unreadable samples (they are counted and logged)"
            ) from None
        key = sample["__key__"]
        image_ext = next((ext for ext in sample if ext in IMAGE_EXTENSIONS), None)
        if image_ext is None:
            raise CorruptImageError(f"{where} key {key} holds no image (files: {sorted(sample)}); rewrite the shard")
        name = f"{key}{image_ext} in {where}"
        if getattr(self.transform, "wants_encoded", False):  # DecodeAndCrop decodes the bytes itself
            return self.transform(EncodedImage(sample[image_ext].read(), name)), self.targets[i]
        try:
            image = to_rgb8(Image.open(sample[image_ext]))
        except DECODE_ERRORS as err:
            raise unreadable(name, err) from None
        return (self.transform(image) if self.transform is not None else image), self.targets[i]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}  # open memory maps stay in their process


def _resolve(url: str, root: Path) -> str:
    """A shard's URL from the index: relative names are next to the index."""
    return url if "://" in url or url.startswith(("pipe:", "/")) else str(root / url)


def shard_groups(dataset: Dataset) -> list[list[int]]:
    """Indices of ``dataset`` grouped by the shard they are stored in (a Subset keeps its own positions)."""
    if isinstance(dataset, ShardDataset):
        return [list(range(start, start + size)) for start, size in zip(dataset.starts, dataset.sizes, strict=False)]
    if isinstance(dataset, Subset):
        inner = shard_groups(dataset.dataset)
        shard_of = {index: s for s, group in enumerate(inner) for index in group}
        grouped: list[list[int]] = [[] for _ in inner]
        for position, index in enumerate(dataset.indices):
            grouped[shard_of[int(index)]].append(position)
        return [group for group in grouped if group]
    raise TypeError(f"{type(dataset).__name__} is not stored in shards")


# ---- the order of an epoch ----------------------------------------------------------------------------
class ShardSampler(KeyedSampler):
    """:class:`~sslvit.data.sampling.KeyedSampler` whose epoch order keeps each rank on its own shards.

    Epoch e visits the shards in a random order and each shard's samples in a random order (both
    seeded by seed and e); rank r takes the r-th contiguous slice of ``num_samples`` of that order
    (with ``drop_last`` the few samples past ``num_replicas * num_samples`` wait for another epoch;
    without it the order wraps around, as ``DistributedSampler`` pads). Keys, resume and the
    batch accounting are the keyed sampler's.
    """

    def __init__(self, dataset: Dataset, batch_size: int, groups: list[list[int]], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size, **kwargs)
        self.groups = groups

    def epoch_order(self) -> list[int]:
        """Every index once, shard by shard (shuffled by shard and within shards when ``shuffle``)."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        groups = [list(group) for group in self.groups]
        if self.shuffle:
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
        return [index for group in groups for index in group]

    def rank_indices(self) -> list[int]:
        order = self.epoch_order()
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order += (order * (self.total_size // max(len(order), 1) + 1))[: self.total_size - len(order)]
        return order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
