"""Image folders with or without labels: where each split lives, and a dataset of unlabelled images.

``data.root`` for ``imagefolder`` is either

- labelled: ``train/<class>/*`` and ``val/<class>/*`` (torchvision's ImageFolder layout), or
- unlabelled, for pretraining only: image files directly in ``data.root`` (or in ``data.root/train``),
  with an optional ``val/`` of images for the validation loss. Evaluation needs labels and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from sslvit.errors import ConfigError, DatasetUnavailableError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_hidden(path: str | Path) -> bool:
    """Names starting with a dot are never data: ``.thumbnails/``, ``.ipynb_checkpoints/``, macOS's ``._x.jpg``
    (AppleDouble metadata) and ``.DS_Store``. One rule for class folders, image files and unlabelled folders."""
    return Path(path).name.startswith(".")


def is_image_file(path: str | Path) -> bool:
    """A visible file with an image suffix (the rule every folder listing here applies)."""
    return not is_hidden(path) and Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (not in sub-folders, not hidden), sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p) and p.is_file())


def class_folders(folder: Path) -> list[str]:
    """The class names of a labelled split: its visible sub-folders, sorted (torchvision's order)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not is_hidden(entry.name))


def is_unlabelled(folder: Path) -> bool:
    """True when ``folder`` holds image files itself (no class sub-folders)."""
    return folder.is_dir() and any(is_image_file(p) for p in folder.iterdir())


def split_folder(root: str | Path, split: str) -> Path | None:
    """The folder of ``split`` (pretrain, train, val) under an imagefolder root; None for a missing
    val split of unlabelled images. Raises for what an ImageFolder root must have."""
    root = Path(root)
    if split == "val":
        if (root / "val").is_dir():
            return root / "val"
        if is_unlabelled(root) or is_unlabelled(root / "train"):
            return None  # unlabelled images without a val/: pretraining runs without validation
        folder = root / "val"
    else:
        folder = root / "train" if (root / "train").is_dir() or not is_unlabelled(root) else root
    if not folder.is_dir():
        raise DatasetUnavailableError(
            f"imagefolder dataset: {folder} does not exist. data.root must hold train/ and val/ folders with one "
            "sub-folder of images per class (torchvision ImageFolder layout), or image files directly (unlabelled, "
            "pretraining only)"
        )
    if split == "train" and is_unlabelled(folder):
        raise ConfigError(unlabelled_message(folder))
    return folder


def unlabelled_message(folder: str | Path) -> str:
    return (
        f"{folder} holds images without class folders (unlabelled): it can be pretrained on, but evaluation "
        "(kNN, linear probe, online kNN) needs labels: point it at an ImageFolder with train/<class>/ and val/<class>/"
    )


class UnlabelledImages(Dataset):
    """Every image file directly inside a folder: item i -> ``(transform(loader(path)), -1)``."""

    labelled = False

    def __init__(self, root: str | Path, transform: Callable | None, loader: Callable[[str], Any]) -> None:
        self.root, self.transform, self.loader = str(root), transform, loader
        self.samples = [(str(p), -1) for p in image_files(Path(root))]
        self.targets = [-1] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.loader(self.samples[i][0])
        return (self.transform(image) if self.transform is not None else image), -1
