"""Datasets the data module reads: ImageFolder images decoded safely, the offline digits, balanced subsets."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from sslvit.data.decode import DECODE_ERRORS, to_rgb8, unreadable
from sslvit.data.folders import class_folders, is_hidden, is_image_file
from sslvit.errors import ConfigError, DatasetUnavailableError

Split = Literal["pretrain", "train", "val"]
SPLITS = ("pretrain", "train", "val")


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to 8-bit RGB (:func:`~sslvit.data.decode.to_rgb8`), naming the file when it cannot be
    read. A decompression bomb (a header claiming far more pixels than PIL's safety limit) is refused before it
    is decoded: for training it is just another unreadable file."""
    try:
        with open(path, "rb") as f:
            return to_rgb8(Image.open(f))
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None


def refuse_symlink_loops(root: str | Path) -> None:
    """Raise if a folder below ``root`` is reached twice through directory symlinks (a loop or a second link).

    torchvision follows directory links: a link to a parent folder would list the same images again
    and again (until paths grow too long), and training would silently weigh them many times.
    """
    seen = {os.path.realpath(root)}
    for current, folders, _ in os.walk(root, followlinks=True):
        for name in folders:
            path = os.path.join(current, name)
            real = os.path.realpath(path)
            if real in seen:
                raise DatasetUnavailableError(
                    f"{path} is a link to {real}, a folder the dataset already holds: following it would list "
                    "the same images again (a symlink loop). Remove the link, or copy the images it should add"
                )
            seen.add(real)


class ImageFolder(tvd.ImageFolder):
    """torchvision's ImageFolder that skips hidden folders and files (:func:`~sslvit.data.folders.is_hidden`),
    refuses symlink loops and says which class folders are empty."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(Path(directory))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int], **kwargs: Any) -> list[tuple[str, int]]:
        refuse_symlink_loops(directory)
        root = Path(directory)

        def visible_image(path: str) -> bool:  # hidden anywhere below the root: .thumbnails/ inside a class too
            return is_image_file(path) and not any(is_hidden(part) for part in Path(path).relative_to(root).parts)

        kwargs.update(extensions=None, is_valid_file=visible_image)
        try:
            return tvd.DatasetFolder.make_dataset(directory, class_to_idx, **kwargs)
        except FileNotFoundError as err:
            raise DatasetUnavailableError(
                f"{directory}: {err}. Every class folder needs at least one image: add images or remove the folder"
            ) from None


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 handwritten digits (8x8, shipped inside the package), as 32x32 RGB.

    Needs no download: the offline default for quickstarts and tests. Every sixth image is in
    ``val`` (300 images), the rest in ``train``/``pretrain`` (1,497 images).
    """

    side = 32

    def __init__(self, split: Split, transform: Callable | None = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        index = np.arange(len(digits.target))
        index = index[index % 6 == 0] if split == "val" else index[index % 6 != 0]
        pixels = (digits.images[index] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [M, 8, 8]
        self.images = [Image.fromarray(p).resize((self.side, self.side), Image.BICUBIC) for p in pixels]
        self.targets = digits.target[index].tolist()
        self.classes = [str(d) for d in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.images[i].convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[i]


def class_balanced_subset(targets: Sequence[int], total: int, seed: int = 0) -> list[int]:
    """Indices of ``total`` samples, as equal a number per class as possible, chosen with a seed."""
    targets = np.asarray(targets)
    classes = np.unique(targets)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]
    chosen: list[int] = []
    quota, extra = divmod(total, len(classes))
    for k, idx in enumerate(per_class):
        chosen.extend(idx[: quota + (k < extra)].tolist())
    if len(chosen) < total:
        raise ConfigError(f"train_subset={total} is larger than the {len(targets)} images available")
    return sorted(chosen)
