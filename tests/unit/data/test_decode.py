"""DecodeAndCrop crops as torchvision does, decodes less, and hands out uint8 crops that collate without a copy."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from sslvit.data.decode import DecodeAndCrop, normalize_on_device, random_resized_box, read_encoded
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


def reference(path: str, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """What torchvision's PIL path gives for the same box and flip, in [0, 1]."""
    image = T.functional.resized_crop(Image.open(path).convert("RGB"), *box, [size, size], T.InterpolationMode.BICUBIC)
    return T.functional.to_tensor(T.functional.hflip(image) if flip else image)


def drawn(seed: int, size: int) -> tuple[tuple[int, int, int, int], bool]:
    """The box and flip DecodeAndCrop draws under the torch RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    rng = random.Random(torch.randint(0, 2**62, (1,)).item())
    box = random_resized_box(500, 375, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), rng=rng)
    return box, rng.random() < 0.5


@pytest.mark.parametrize("seed", range(6))
def test_the_crop_equals_torchvisions_pil_crop_of_the_same_box(photo, seed):
    torch.manual_seed(seed)
    exact = DecodeAndCrop(224, draft=False)(read_encoded(photo))
    torch.manual_seed(seed)
    small = DecodeAndCrop(96)(read_encoded(photo))  # crops of >= 192 px decode at 1/2 scale
    assert exact.dtype == small.dtype == torch.uint8 and exact.shape == (3, 224, 224)
    # libjpeg-turbo through torchvision and torch's bicubic kernel: equal to PIL's but for rounding
    assert (exact.float() / 255 - reference(photo, *drawn(seed, 224), 224)).abs().mean() < 1.5 / 255
    # a DCT-scaled decode is a slightly smoother image of the same crop; a wrong box or flip differs by ~60/255
    assert (small.float() / 255 - reference(photo, *drawn(seed, 96), 96)).abs().mean() < 6 / 255


def test_boxes_follow_torchvisions_random_resized_crop():
    rng, n = random.Random(0), 4000
    ours = [random_resized_box(500, 375, (0.2, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)]
    theirs = [T.RandomResizedCrop.get_params(torch.empty(3, 375, 500), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    for boxes in (ours, theirs):
        assert all(0 <= t and 0 <= left and t + h <= 375 and left + w <= 500 for t, left, h, w in boxes)
    area, log_aspect, top = (lambda b: b[2] * b[3] / (500 * 375)), (lambda b: math.log(b[3] / b[2])), (lambda b: b[0])
    for stat, tolerance in ((area, 0.01), (log_aspect, 0.01), (top, 2.0)):
        assert abs(np.mean([stat(b) for b in ours]) - np.mean([stat(b) for b in theirs])) < tolerance
    assert random_resized_box(500, 100, (0.99, 1.0), (3 / 4, 4 / 3), random.Random(0)) == (0, 183, 100, 133)


def test_large_crops_decode_at_a_dct_scale_small_ones_at_full_size(photo):
    def decoded(size: int, box: tuple[int, int, int, int], draft: bool = True) -> tuple[tuple[int, ...], float]:
        data = read_encoded(photo).data
        pixels, factor = DecodeAndCrop(size, draft=draft).decode(Image.open(photo), data, box)
        return tuple(pixels.shape), factor

    assert decoded(224, (50, 100, 100, 100)) == ((3, 375, 500), 1.0)  # 100 px -> 224 px: needs every pixel
    assert decoded(64, (0, 0, 300, 300)) == ((3, 94, 125), 94 / 375)  # 300 px -> 64 px: 1/4 still gives 75 px
    assert decoded(64, (0, 0, 250, 250)) == ((3, 188, 250), 188 / 375)  # at 1/4 the crop would be 62.5 px < 64
    assert decoded(64, (0, 0, 300, 300), draft=False) == ((3, 375, 500), 1.0)


def test_truncated_jpeg_is_named(photo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(open(photo, "rb").read()[:3000])
    with pytest.raises(CorruptImageError, match="broken.jpg: .*truncated.*skip_corrupt"):
        DecodeAndCrop(224)(read_encoded(str(broken)))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(CorruptImageError, match="text.jpg"):
        DecodeAndCrop(224)(read_encoded(str(tmp_path / "text.jpg")))
    with pytest.raises(CorruptImageError, match="missing.jpg"):
        read_encoded(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"bomb.{suffix}"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 60,000 pixels: three times the limit
    with pytest.raises(CorruptImageError, match=f"bomb.{suffix}: .*decompression bomb"):
        DecodeAndCrop(64)(read_encoded(str(path)))


def test_normalize_on_device_equals_to_tensor_then_normalize():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = T.Normalize(mean, std)(images.float() / 255)
    assert torch.allclose(normalize_on_device(images, mean, std), expected, atol=1e-5)


def test_channels_last_crops_collate_into_a_batch_without_changing_values(photo):
    from sslvit.data.sampling import collate_keyed

    crops = [DecodeAndCrop(32)(read_encoded(photo)) for _ in range(3)]
    batch = collate_keyed([(crop, 0, k) for k, crop in enumerate(crops)])["images"]
    assert batch.shape == (3, 3, 32, 32) and batch.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(batch[i], crops[i]) for i in range(3))
    assert normalize_on_device(batch, (0.5,) * 3, (0.5,) * 3).is_contiguous()
