"""Batched RandomResizedCrop + horizontal flip on the training device, drawn from per-sample keys.

For datasets that fit in device memory as uint8 (CIFAR: 138 MB), ``data.on_device: true`` keeps
the images there and augments whole batches with one ``grid_sample`` call, so small images never
wait for a CPU decoding pipeline. The crop distribution is torchvision's RandomResizedCrop:
area ~ U(scale) of the image, log aspect ratio ~ U(log ratio), up to 10 tries, else a centre
crop with the ratio clamped to the allowed range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sslvit.errors import ConfigError
from sslvit.seeding import keyed_rand

AUGMENT_SALT = 0x4155_47  # 'AUG'
TRIES = 10


def crop_boxes(
    keys: torch.Tensor,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes ``[N, 4]`` as (top, left, h, w) in pixels and flip flags ``[N]``, one per key."""
    u = keyed_rand(keys, TRIES * 4 + 1, salt=AUGMENT_SALT).double()  # [N, 41]
    tries, flip = u[:, :-1].view(-1, TRIES, 4), u[:, -1] < 0.5
    area = height * width * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [N, TRIES]
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full_like(valid[:, 0], -1, dtype=torch.long))
    pick = first.clamp_min(0).unsqueeze(1)
    h, w = h.gather(1, pick).squeeze(1), w.gather(1, pick).squeeze(1)
    top = torch.floor(tries[..., 2].gather(1, pick).squeeze(1) * (height - h + 1))
    left = torch.floor(tries[..., 3].gather(1, pick).squeeze(1) * (width - w + 1))
    # Fallback (no valid try): the whole image, cropped to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    fw, fh = (
        (width, round(width / ratio[0]))
        if in_ratio < ratio[0]
        else (round(height * ratio[1]), height)
        if in_ratio > ratio[1]
        else (width, height)
    )
    fallback = first < 0
    h, w = torch.where(fallback, float(fh), h), torch.where(fallback, float(fw), w)
    top = torch.where(fallback, float((height - fh) // 2), top)
    left = torch.where(fallback, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1).float(), flip


def crop_resize_flip(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int, mode: str = "bicubic"
) -> torch.Tensor:
    """images: uint8 or float [N, C, H, W] -> float [N, C, size, size] in [0, 1], box n resized, flipped where set."""
    n, _, height, width = images.shape
    boxes, flip = boxes.to(images.device), flip.to(images.device)
    top, left, h, w = boxes.unbind(1)
    # Affine map from output coordinates in [-1, 1] to the box in input coordinates (align_corners=False).
    sx = (w / width) * torch.where(flip, -1.0, 1.0)
    sy = h / height
    cx = (2 * left + w) / width - 1
    cy = (2 * top + h) / height - 1
    zeros = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zeros, cx], 1), torch.stack([zeros, sy, cy], 1)], 1)  # [N, 2, 3]
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    out = F.grid_sample(pixels, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def augment_batch(
    images: torch.Tensor,
    keys: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 images [N, C, H, W] on the device -> cropped, flipped, normalized [N, C, size, size]."""
    boxes, flip = crop_boxes(keys, *images.shape[-2:], scale=scale, ratio=ratio)
    out = crop_resize_flip(images, boxes, flip & hflip, size)
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (out - mean_t) / std_t


class ResidentIndices(Dataset):
    """Stands in for a dataset whose images live in one tensor: item i is ``(i, label)``."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, self.targets[i]


def stack_images(batch: list[tuple[torch.Tensor, int]]) -> torch.Tensor | list[torch.Tensor]:
    """A loader batch of ``(image, label)`` as one tensor [B, C, H, W] (a list where sizes differ).

    One tensor per batch crosses from a worker, not one per image: each tensor shared between processes
    holds a file descriptor, and 45,000 of them exhaust the limit ("received 0 items of ancdata")."""
    images = [image for image, _ in batch]
    return torch.stack(images) if len({tuple(image.shape) for image in images}) == 1 else images


def decode_all(dataset: Dataset, num_workers: int = 0) -> torch.Tensor:
    """Every image of a dataset of ``(uint8 image [C, H, W], label)`` as one tensor [N, C, H, W]."""
    loader = DataLoader(dataset, batch_size=512, num_workers=num_workers, collate_fn=stack_images)
    chunks = list(loader)
    sizes = {tuple(image.shape) for chunk in chunks for image in chunk}  # a stacked chunk iterates its images
    if len(sizes) != 1:
        raise ConfigError(
            f"data.on_device needs images of one size, found {len(sizes)} sizes (e.g. {sorted(sizes)[:3]}); "
            "resize the dataset or set data.on_device: false"
        )
    return torch.cat(chunks)
