"""The 224 px training transform that keeps up: from the encoded file to a uint8 crop, in few steps.

MAE's loader decodes each JPEG into a PIL image, crops it, resizes it with PIL, converts it to
float and normalizes it on the CPU. :class:`DecodeAndCrop` draws crops and flips from the same
distribution (torchvision's RandomResizedCrop; from the sample's keyed RNG), but

- draws the crop from the header alone, then decodes with ``torchvision.io.decode_jpeg`` straight
  into a tensor (libjpeg-turbo, no PIL image in between);
- when the crop is at least twice the output size each way, decodes with PIL at the smallest DCT
  scale (1/2, 1/4, 1/8: ``draft``) that keeps it so: large photos decode at a fraction of the pixels;
- crops by slicing and resizes the uint8 crop (channels-last) with torch's vectorized antialiased
  bicubic kernel (4-6x faster than PIL's resize on this CPU), then flips;
- returns ``uint8 [3, size, size]``: a quarter of the bytes of float32 to collate, pin and copy;
  the data module normalizes on the training device (``on_after_batch_transfer``).

Measurements of each lever: ``benchmarks/loader.py`` and benchmarks/results/speed.md.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from torchvision.io import ImageReadMode, decode_jpeg

from sslvit.errors import CorruptImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError, RuntimeError)


@dataclass
class EncodedImage:
    """The bytes of an image file and a name for error messages (a path, or a key in a shard)."""

    data: bytes
    name: str


def unreadable(name: str, err: BaseException) -> CorruptImageError:
    reason = str(err).strip().splitlines()[-1].split(", ")[-1] if str(err).strip() else type(err).__name__
    if isinstance(err, UnmappableImageError):
        reason = str(err)
    return CorruptImageError(
        f"cannot read image {name}: {reason}. Replace or delete it, or set `data.skip_corrupt: true` to skip "
        "unreadable images (they are counted and logged)"
    )


# Modes whose values do not fit in 8 bits. PIL's convert("RGB") clips them at 255 (a 16-bit photo becomes white).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnmappableImageError(ValueError):
    """An image whose values have no unambiguous 8-bit meaning (the message says why; loaders add the file)."""


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any image PIL opens -> 8-bit RGB, each mode mapped by the range its values really use, or refused.

    - 8-bit modes (L, P, RGB, RGBA, CMYK, YCbCr, LA, 1, ...): PIL's conversion (alpha is dropped);
    - 16-bit grayscale (``I;16*``, e.g. 16-bit PNG): ``value / 257`` (65535 -> 255);
    - 32-bit integers (``I``): as 8-bit data when every value is in 0..255, as 16-bit data in 0..65535;
    - 32-bit floats (``F``): values in [0, 1] are scaled by 255, values in [0, 255] kept;

    anything else (negative values, larger ranges, NaN) raises :class:`UnmappableImageError` with the range
    found, which the loaders turn into the one-line unreadable-image error naming the file.
    """
    mode = image.mode
    if mode not in (*SIXTEEN_BIT_MODES, "I", "F"):
        return image.convert("RGB")
    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and 0 <= low and 255 < high <= 65535):
        scale = 255.0 / 65535.0
    elif mode == "F" and 0 <= low and high <= 1.0:
        scale = 255.0
    elif 0 <= low and high <= 255:
        scale = 1.0
    else:
        raise UnmappableImageError(
            f"its {mode} pixels span [{low:g}, {high:g}]: sslvit maps 0..255 and 0..65535 (and floats in 0..1) to "
            "8-bit RGB and nothing else. Convert it to an 8-bit image"
        )
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def read_encoded(path: str) -> EncodedImage:
    """An image file's bytes, not decoded (the loader of an ImageFolder for :class:`DecodeAndCrop`)."""
    try:
        with open(path, "rb") as file:
            return EncodedImage(file.read(), path)
    except OSError as err:
        raise unreadable(path, err) from None


def open_header(data: bytes) -> Image.Image:
    """The image, opened lazily (header read, nothing decoded); JPEG first, without PIL's format probing."""
    try:
        header = JpegImageFile(io.BytesIO(data))
    except SyntaxError:  # not a JPEG
        return Image.open(io.BytesIO(data))  # checks for decompression bombs itself
    width, height = header.size
    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:  # Image.open's limit
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels is more than twice PIL's limit of {Image.MAX_IMAGE_PIXELS} (a decompression bomb)"
        )
    return header


def random_resized_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)``, torchvision's algorithm in plain Python (4x faster
    than its tensor version per image): area ~ U(scale), log aspect ~ U(log ratio), 10 tries, else
    the whole image cropped to the nearest allowed aspect ratio."""
    area, log_lo, log_hi = width * height, math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target, aspect = area * rng.uniform(*scale), math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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
                pixels = to_rgb8(header)
                return torch.from_numpy(np.array(pixels)).permute(2, 0, 1), pixels.height / height
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), 1.0
        return torch.from_numpy(np.array(to_rgb8(header))).permute(2, 0, 1), 1.0

    def __call__(self, image: EncodedImage) -> torch.Tensor:
        try:
            header = open_header(image.data)
            rng = random.Random(torch.randint(0, 2**62, (1,)).item())  # one draw of the (keyed) torch RNG
            top, left, h, w = random_resized_box(*header.size, scale=self.scale, ratio=self.ratio, rng=rng)
            flip = self.hflip and rng.random() < 0.5
            pixels, factor = self.decode(header, image.data, (top, left, h, w))
        except DECODE_ERRORS as err:
            raise unreadable(image.name, err) from None
        if factor != 1.0:  # decoded at a DCT scale: the same box in the smaller image
            top, left = round(top * factor), round(left * factor)
            h, w = max(1, round(h * factor)), max(1, round(w * factor))
        # Channels-last (HWC) memory is what torch's vectorized uint8 resampling kernel reads; copying the
        # crop into it costs less than the kernel saves (12% of the whole transform, measured). The result
        # stays channels-last: collate_keyed stacks such crops without a transposing copy.
        crop = pixels[None, :, top : top + h, left : left + w].contiguous(memory_format=torch.channels_last)
        out = F.interpolate(crop, size=(self.size, self.size), mode="bicubic", antialias=True)[0]
        return out.flip(-1) if flip else out

    def __repr__(self) -> str:
        settings = f"size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, draft={self.draft}"
        return f"DecodeAndCrop({settings})"


def normalize_on_device(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (already on the training device) -> contiguous float ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0
    return ((images.float() - mean_t) / std_t).contiguous()
