"""The 224 px training transform that keeps up: decode only what the crop needs, hand out uint8.

MAE's loader decodes every JPEG at full size, crops, resizes, converts to float and normalizes on
the CPU. :class:`DraftCrop` draws the same RandomResizedCrop and flip (from the same random
numbers, so a sample's key gives the same crop either way) but

- reads only the JPEG header to draw the crop, then asks libjpeg for the smallest DCT scale
  (1/2, 1/4 or 1/8, PIL's ``draft``) at which the crop still has at least ``size`` pixels each
  way: a 20%-area crop of a 500x375 photo decodes at a quarter of the pixels;
- crops and resizes in one PIL call (``resize(box=...)``), flips the 224 px result;
- returns ``uint8 [3, size, size]``: a quarter of the bytes of float32 to collate, pin and copy;
  the data module normalizes on the training device (``on_after_batch_transfer``).

Measurements of each lever: ``benchmarks/loader.py`` and docs/speed.md.
"""

from __future__ import annotations

import math

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor

from sslvit.errors import CorruptImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)


def unreadable(name: str, err: BaseException) -> CorruptImageError:
    return CorruptImageError(
        f"cannot read image {name}: {err}. Replace or delete it, or set `data.skip_corrupt: true` to skip "
        "unreadable images (they are counted and logged)"
    )


def open_lazily(path: str) -> Image.Image:
    """Open an image file without decoding it (the header only), naming the file when that fails."""
    try:
        return Image.open(path)
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None


class DraftCrop:
    """RandomResizedCrop (bicubic) + horizontal flip of a lazily opened image -> uint8 ``[3, size, size]``.

    Args:
        size: output side in pixels.
        scale, ratio: RandomResizedCrop's area and aspect ranges.
        hflip: flip half of the crops horizontally.
        draft: decode JPEGs at the smallest DCT scale that keeps the crop at ``size`` or more.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        draft: bool = True,
    ) -> None:
        self.size, self.scale, self.ratio, self.hflip, self.draft = size, tuple(scale), tuple(ratio), hflip, draft

    def crop_box(self, image: Image.Image) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in full-size pixels, drawn as torchvision draws it (header only)."""
        top, left, h, w = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        return left, top, left + w, top + h

    def decode(self, image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
        """The RGB pixels of ``image``, at the smallest DCT scale that keeps ``box`` at ``size`` or more."""
        width, height = image.size
        try:
            if self.draft and image.format == "JPEG":
                crop_w, crop_h = box[2] - box[0], box[3] - box[1]
                image.draft("RGB", (math.ceil(width * self.size / crop_w), math.ceil(height * self.size / crop_h)))
            return image.convert("RGB")
        except DECODE_ERRORS as err:
            raise unreadable(getattr(image, "filename", "") or "(in memory)", err) from None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        box = self.crop_box(image)
        flip = self.hflip and torch.rand(1).item() < 0.5  # drawn after the crop, as RandomHorizontalFlip does
        width, height = image.size
        pixels = self.decode(image, box)
        sx, sy = pixels.width / width, pixels.height / height  # < 1 when decoded at a DCT scale
        scaled_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        out = pixels.resize((self.size, self.size), Image.BICUBIC, box=scaled_box)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_tensor(out)

    def __repr__(self) -> str:
        settings = f"size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, draft={self.draft}"
        return f"DraftCrop({settings})"


def normalize_on_device(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (already on the training device) -> float ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0
    return (images.float() - mean_t) / std_t
