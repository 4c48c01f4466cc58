"""DraftCrop draws torchvision's crop and flip from the same numbers, decodes less, and hands out uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from sslvit.data.decode import DraftCrop, normalize_on_device, open_lazily
from sslvit.errors import CorruptImageError


@pytest.fixture
def photo(tmp_path):
    """A 500x375 JPEG with structure at every scale (an ImageNet-sized photo stand-in)."""
    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([x * 255 / 500, y * 255 / 375, 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)], axis=-1)
    noise = np.random.default_rng(0).normal(0, 8, pixels.shape)
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return str(path)


def reference(path: str, seed: int) -> torch.Tensor:
    """MAE's training transform (before normalization) under the torch RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    transform = T.Compose([T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), T.ToTensor()])  # fmt: skip
    return transform(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("seed", range(6))
def test_same_crop_and_flip_as_torchvision_from_the_same_random_numbers(photo, seed):
    expected = reference(photo, seed)
    torch.manual_seed(seed)
    exact = DraftCrop(224, draft=False)(open_lazily(photo))
    torch.manual_seed(seed)
    drafted = DraftCrop(224)(open_lazily(photo))
    assert exact.dtype == drafted.dtype == torch.uint8 and exact.shape == drafted.shape == (3, 224, 224)
    # one PIL call (resize with a box) instead of crop-then-resize: equal but for rounding and the crop's edges
    assert (exact.float() / 255 - expected).abs().mean() < 1.5 / 255
    # a DCT-scaled decode is a slightly smoother image of the same crop; a wrong box or flip differs by ~60/255
    assert (drafted.float() / 255 - expected).abs().mean() < 6 / 255


def test_small_crops_decode_at_a_dct_scale_large_ones_at_full_size(photo):
    crop = DraftCrop(224)
    small = crop.decode(open_lazily(photo), box=(100, 50, 200, 150))  # 100 px -> 224 px: needs the full size
    assert small.size == (500, 375)
    crop = DraftCrop(64)
    quarter = crop.decode(open_lazily(photo), box=(0, 0, 300, 300))  # 300 px -> 64 px: 1/4 still gives 75 px
    assert quarter.size == (125, 94)
    half = crop.decode(open_lazily(photo), box=(0, 0, 250, 250))  # at 1/4 the crop would be 62.5 px < 64
    assert half.size == (250, 188)
    assert DraftCrop(64, draft=False).decode(open_lazily(photo), box=(0, 0, 300, 300)).size == (500, 375)


def test_truncated_jpeg_is_named(photo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(open(photo, "rb").read()[:3000])
    with pytest.raises(CorruptImageError, match="broken.jpg.*skip_corrupt"):
        DraftCrop(224)(open_lazily(str(broken)))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(CorruptImageError, match="text.jpg"):
        open_lazily(str(tmp_path / "text.jpg"))


def test_normalize_on_device_equals_to_tensor_then_normalize():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = T.Normalize(mean, std)(images.float() / 255)
    assert torch.allclose(normalize_on_device(images, mean, std), expected, atol=1e-5)
