"""Datasets the data module reads: ImageFolder images decoded safely, the offline digits, balanced subsets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sslvit.errors import ConfigError, CorruptImageError

Split = Literal["pretrain", "train", "val"]
SPLITS = ("pretrain", "train", "val")


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB, naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise CorruptImageError(
            f"cannot read image {path}: {err}. Replace or delete the file, or set "
            "`data.skip_corrupt: true` to skip unreadable images (they are counted and logged)"
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


