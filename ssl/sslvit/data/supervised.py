"""The training transform of supervised fine-tuning: timm's ``create_transform``, as MAE's and BEiT's code use it.

RandomResizedCrop (bicubic) + horizontal flip, RandAugment, normalization, random erasing. Per-image
randomness follows the sample's key like every sslvit transform (:class:`sslvit.data.sampling.KeyedDataset`
seeds torch's, Python's and NumPy's generators, all of which timm's transforms draw from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageOps

from sslvit.errors import ConfigError


@dataclass
class SupervisedAugment:
    """Augmentations of the labelled training images (defaults: MAE's ``main_finetune.py``).

    Args:
        crop_scale, crop_ratio: RandomResizedCrop area and aspect ranges.
        hflip: probability of a horizontal flip.
        auto_augment: timm policy string, e.g. ``rand-m9-mstd0.5-inc1`` (RandAugment: two ops of
            magnitude 9, magnitude noise 0.5, increasing severity); None disables it.
        color_jitter: brightness/contrast/saturation jitter, only used when ``auto_augment`` is None
            (timm's rule); None disables it.
        re_prob, re_mode, re_count: random erasing: probability, fill (``pixel``: per-pixel normal
            noise, ``rand``: per-channel, ``const``: zeros) and number of rectangles.
        interpolation: resampling of the crop (``bicubic``, ``bilinear``, ``random``).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float | None = None
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ConfigError(f"data.supervised.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        for key in ("hflip", "re_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"data.supervised.{key} is a probability in [0, 1], got {getattr(self, key)}")
        if self.re_mode not in ("pixel", "rand", "const"):
            raise ConfigError(f"data.supervised.re_mode must be pixel, rand or const, got {self.re_mode!r}")
        if self.auto_augment is not None and not self.auto_augment.startswith(("rand", "augmix", "original", "v0")):
            raise ConfigError(
                f"data.supervised.auto_augment={self.auto_augment!r} is not a timm policy: use e.g. "
                "'rand-m9-mstd0.5-inc1' (RandAugment), 'augmix-m5-w4-d2', 'v0', or null"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | SupervisedAugment) -> SupervisedAugment:
        return values if isinstance(values, cls) else cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def transform(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
        """PIL image -> normalized tensor [C, image_size, image_size], as timm builds it for training."""
        from timm.data import create_transform

        transform = create_transform(
            input_size=image_size,
            is_training=True,
            scale=tuple(self.crop_scale),
            ratio=tuple(self.crop_ratio),
            hflip=self.hflip,
            color_jitter=self.color_jitter,
            auto_augment=self.auto_augment,
            interpolation=self.interpolation,
            re_prob=self.re_prob,
            re_mode=self.re_mode,
            re_count=self.re_count,
            mean=tuple(mean),
            std=tuple(std),
        )
        for step in getattr(transform, "transforms", []):
            for op in getattr(step, "ops", []):  # RandAugment / AutoAugment operations
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
        return transform


def posterize(image: Image.Image, bits: int, **_: Any) -> Image.Image:
    """Keep the ``bits`` most significant bits of every channel; 0 bits give a black image.

    timm's RandAugment asks for 0 bits at magnitude 10 (``rand-m9-mstd0.5-inc1`` reaches it about once
    in 40 draws), which Pillow < 13 turned into a black image and Pillow 13 refuses with a ValueError.
    """
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)
