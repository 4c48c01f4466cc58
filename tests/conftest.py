"""Shared fixtures: tiny models and tiny generated datasets (tests never need a download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.backbone import ViTConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vit() -> ViTConfig:
    """A 2-block, 64-wide ViT on 16px images with 4px patches (a 4x4 grid)."""
    return ViTConfig(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 16, seed: int = 0) -> Path:
    """An ImageFolder with train/ and val/, each class a distinct colour plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[c % 3] = 200
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
