"""The 224 px training transform that keeps up: from the encoded file to a uint8 crop, in few steps.

MAE's loader decodes each JPEG into a PIL image, crops it, resizes it with PIL, converts it to
float and normalizes it on the CPU. :class:`DecodeAndCrop` draws the same RandomResizedCrop and
flip from the same random numbers (a sample's key gives the same crop either way), but

- draws the crop from the header alone, then decodes with ``torchvision.io.decode_jpeg`` straight
  into a tensor (libjpeg-turbo, no PIL image in between);
- when the crop is at least twice the output size each way, decodes with PIL at the smallest DCT
  scale (1/2, 1/4, 1/8: ``draft``) that keeps it so: large photos decode at a fraction of the pixels;
- crops by slicing (no copy) and resizes the uint8 crop with torch's vectorized antialiased bicubic
  kernel (4-6x faster than PIL's on this CPU), then flips;
- returns ``uint8 [3, size, size]``: a quarter of the bytes of float32 to collate, pin and copy;
  the data module normalizes on the training device (``on_after_batch_transfer``).

Measurements of each lever: ``benchmarks/loader.py`` and docs/speed.md.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop

from sslvit.errors import CorruptImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError, RuntimeError)


@dataclass
class EncodedImage:
    """The bytes of an image file and a name for error messages (a path, or a key in a shard)."""

    data: bytes
    name: str


def unreadable(name: str, err: BaseException) -> CorruptImageError:
    reason = str(err).strip().splitlines()[-1].split(", ")[-1] if str(err).strip() else type(err).__name__
    return CorruptImageError(
        f"cannot read image {name}: {reason}. Replace or delete it, or set `data.skip_corrupt: true` to skip "
        "unreadable images (they are counted and logged)"
    )


def read_encoded(path: str) -> EncodedImage:
    """An image file's bytes, not decoded (the loader of an ImageFolder for :class:`DecodeAndCrop`)."""
    try:
        with open(path, "rb") as file:
            return EncodedImage(file.read(), path)
    except OSError as err:
        raise unreadable(path, err) from None


class DecodeAndCrop:
    """RandomResizedCrop (bicubic) + horizontal flip of an :class:`EncodedImage` -> uint8 ``[3, size, size]``.

    Args:
        size: output side in pixels.
        scale, ratio: RandomResizedCrop's area and aspect ranges.
        hflip: flip half of the crops horizontally.
        draft: decode JPEGs at a DCT scale when the crop is at least twice ``size`` each way.
    """

    wants_encoded = True  # datasets hand it the file's bytes instead of a decoded image

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        draft: bool = True,
    ) -> None:
        self.size, self.scale, self.ratio, self.hflip, self.draft = size, tuple(scale), tuple(ratio), hflip, draft

    def decode(self, header: Image.Image, data: bytes, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, float]:
        """The RGB pixels ``uint8 [3, H', W']`` and the factor H'/H at which they were decoded.

        ``box`` is (top, left, height, width) in full-size pixels; ``header`` the lazily opened image.
        """
        _, _, h, w = box
        if header.format == "JPEG":
            if self.draft and min(h, w) >= 2 * self.size:  # a DCT scale keeps the crop at >= size
                width, height = header.size
                header.draft("RGB", (-(-width * self.size // w), -(-height * self.size // h)))
                pixels = header.convert("RGB")
                return torch.from_numpy(np.array(pixels)).permute(2, 0, 1), pixels.height / height
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), 1.0
        return torch.from_numpy(np.array(header.convert("RGB"))).permute(2, 0, 1), 1.0

    def __call__(self, image: EncodedImage) -> torch.Tensor:
        try:
            header = Image.open(io.BytesIO(image.data))  # reads the header only
            top, left, h, w = RandomResizedCrop.get_params(header, list(self.scale), list(self.ratio))
            flip = self.hflip and torch.rand(1).item() < 0.5  # drawn after the crop, as RandomHorizontalFlip does
            pixels, factor = self.decode(header, image.data, (top, left, h, w))
        except DECODE_ERRORS as err:
            raise unreadable(image.name, err) from None
        if factor != 1.0:  # decoded at a DCT scale: the same box in the smaller image
            top, left = round(top * factor), round(left * factor)
            h, w = max(1, round(h * factor)), max(1, round(w * factor))
        crop = pixels[None, :, top : top + h, left : left + w]
        out = F.interpolate(crop, size=(self.size, self.size), mode="bicubic", antialias=True)[0]
        return out.flip(-1) if flip else out

    def __repr__(self) -> str:
        settings = f"size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, draft={self.draft}"
        return f"DecodeAndCrop({settings})"


def normalize_on_device(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (already on the training device) -> float ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0
    return (images.float() - mean_t) / std_t
