"""Fitting a :class:`~sslvit.methods.beit.tokenizer.KMeansTokenizer` on data, and measuring how well it covers it.

The codebook is Faiss k-means on a seeded sample of patches: images are drawn from the training
split with the training transform (the views BEiT will tokenize), a few random patches from each.
Coverage is reported on that sample and on held-out patches of the validation split: used codes,
perplexity of the code histogram and the error of each patch against its code's mean patch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.sampling import CollateKeyed, KeyedDataset
from sslvit.errors import ConfigError
from sslvit.methods.beit.tokenizer import KMeansTokenizer
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.masking import patchify
from sslvit.seeding import keyed_rand, sample_key

PATCH_SALT = 0x5041_5443  # 'PATC': the stream of keyed random numbers choosing the sampled patches


def default_vocab_size(image_size: int) -> int:
    """1024 codes for small images (CIFAR-sized, up to 64 px), 8192 (as BEiT's dVAE) for larger ones."""
    return 1024 if image_size <= 64 else 8192


@dataclass
class CodebookConfig:
    """How BEiT's k-means tokenizer is fitted when no ``model.tokenizer`` directory is given.

    Args:
        vocab_size: number of codes, also the size of BEiT's prediction head; None: 1024 for images
            up to 64 px, 8192 above.
        color_weight: weight of the mean-colour and contrast descriptor next to the patch shape
            (0: codes describe structure only).
        patches_per_code: sample size, as patches per code (Faiss asks for at least 39).
        patches_per_image: random patches taken from each sampled image (more when the data is small).
        iterations: k-means iterations.
        seed: fixes the image sample, their augmentations, the patches and the k-means initialisation.
    """

    vocab_size: int | None = None
    color_weight: float = 0.5
    patches_per_code: int = 64
    patches_per_image: int = 8
    iterations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"codebook.vocab_size must be at least 2 (or null), got {self.vocab_size}")
        for key in ("patches_per_code", "patches_per_image", "iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"codebook.{key} must be at least 1, got {getattr(self, key)}")
        if self.color_weight < 0:
            raise ConfigError(f"codebook.color_weight must be non-negative, got {self.color_weight}")

    def resolved(self, image_size: int) -> CodebookConfig:
        """A copy with ``vocab_size`` filled in for ``image_size``."""
        return CodebookConfig(**{**asdict(self), "vocab_size": self.vocab_size or default_vocab_size(image_size)})


@dataclass
class CodebookStats:
    """How a codebook covers a set of patches (pixel errors in normalized-image units)."""

    split: str
    num_patches: int
    used_codes: int
    vocab_size: int
    perplexity: float  # exp(entropy) of the code histogram; vocab_size if all codes are equally frequent
    top_code_share: float  # share of the most frequent code: the accuracy of always predicting it
    mse: float  # squared error of a patch against its code's mean patch, per pixel value
    relative_mse: float  # mse / variance of the pixel values around the mean patch: 1 - R^2
    shape_relative_mse: float  # the same for the colour-free shape part of the features

    HEADER = (
        f"{'patches':<12} {'count':>9} {'used codes':>17} {'perplexity':>10} {'top code':>8} {'pixel MSE':>9} "
        f"{'pixel 1-R2':>10} {'shape 1-R2':>10}"
    )

    def row(self) -> str:
        used = f"{self.used_codes}/{self.vocab_size} ({100 * self.used_codes / self.vocab_size:.0f}%)"
        return (
            f"{self.split:<12} {self.num_patches:>9,} {used:>17} {self.perplexity:>10.1f} {self.top_code_share:>8.1%} "
            f"{self.mse:>9.4f} {self.relative_mse:>10.3f} {self.shape_relative_mse:>10.3f}"
        )


def codebook_stats(tokenizer: KMeansTokenizer, patches: torch.Tensor, split: str) -> CodebookStats:
    """Coverage of ``patches`` [M, p*p*C] by the tokenizer's codes."""
    features = tokenizer.features(patches)
    codes = tokenizer.assign(features)
    counts = torch.bincount(codes, minlength=tokenizer.vocab_size).double()
    p = counts[counts > 0] / counts.sum()

    def unexplained(x: torch.Tensor, centroids: torch.Tensor) -> tuple[float, float]:
        """(mean squared error against the code's centroid, that error over the variance around the mean)."""
        x = x.double()
        error = (x - centroids.double()[codes]).pow(2).mean()
        return float(error), float(error / (x - x.mean(0)).pow(2).mean().clamp_min(1e-12))

    mse, relative = unexplained(patches, tokenizer.patch_centroids)
    size = patches.shape[1]
    _, shape_relative = unexplained(features[:, :size], tokenizer.centroids[:, :size])
    return CodebookStats(
        split=split,
        num_patches=len(patches),
        used_codes=int((counts > 0).sum()),
        vocab_size=tokenizer.vocab_size,
        perplexity=float(torch.exp(-(p * p.log()).sum())),
        top_code_share=float(p.max()),
        mse=mse,
        relative_mse=relative,
        shape_relative_mse=shape_relative,
    )


def sample_patches(
    dataset: Dataset,
    num_patches: int,
    patches_per_image: int,
    patch_size: int,
    grid_size: int,
    seed: int,
    batch_size: int = 256,
    num_workers: int = 0,
) -> torch.Tensor:
    """A seeded sample of about ``num_patches`` patches [M, p*p*C] from a dataset of (image, label) items.

    Takes ``patches_per_image`` random patches from each of as many random images as needed; on a
    dataset too small for that, more patches per image (at most all of them, then fewer patches).
    Each image's augmentation and patch choice follow from its key (:mod:`sslvit.seeding`), so the
    sample depends on ``seed`` only, not on ``batch_size`` or ``num_workers``.
    """
    length = grid_size * grid_size
    per_image = min(length, max(patches_per_image, math.ceil(num_patches / len(dataset))))
    num_images = min(len(dataset), math.ceil(num_patches / per_image))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images].tolist()
    items = [(index, sample_key(seed, 0, index)) for index in chosen]
    loader = DataLoader(
        KeyedDataset(dataset),
        batch_size=batch_size,
        sampler=items,
        num_workers=num_workers,
        collate_fn=CollateKeyed(count_skipped=False),
    )
    sample = []
    for batch in loader:
        patches = patchify(batch["images"], patch_size)  # [B, L, P]
        if patches.shape[1] != length:
            raise ValueError(f"images give {patches.shape[1]} patches, expected a {grid_size}x{grid_size} grid")
        pick = keyed_rand(batch["keys"], length, salt=PATCH_SALT).argsort(dim=1)[:, :per_image]
        sample.append(torch.gather(patches, 1, pick.unsqueeze(-1).expand(-1, -1, patches.shape[2])).flatten(0, 1))
    return torch.cat(sample)[:num_patches]


def fit_kmeans_tokenizer(
    patches: torch.Tensor,
    vocab_size: int,
    patch_size: int,
    image_size: int,
    in_chans: int = 3,
    color_weight: float = 0.5,
    iterations: int = 20,
    seed: int = 0,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> KMeansTokenizer:
    """Faiss k-means with ``vocab_size`` centroids on the features of ``patches`` [M, p*p*C]; one seed, one codebook."""
    if len(patches) < vocab_size:
        raise ConfigError(
            f"only {len(patches)} patches to fit {vocab_size} codes: lower codebook.vocab_size or use more data"
        )
    tokenizer = KMeansTokenizer(vocab_size, patch_size, image_size, in_chans, color_weight, mean, std)
    features = np.ascontiguousarray(tokenizer.features(patches).numpy())
    kmeans = faiss.Kmeans(
        features.shape[1],
        vocab_size,
        niter=iterations,
        seed=seed,
        verbose=False,
        max_points_per_centroid=len(features),
        min_points_per_centroid=1,  # use the whole sample, no warning
    )
    kmeans.train(features)
    tokenizer.centroids.copy_(torch.from_numpy(kmeans.centroids))
    tokenizer.fitted.fill_(True)
    # Each code's mean patch in pixels; a code no sample patch chose falls back to the mean patch.
    codes = tokenizer.assign(torch.from_numpy(features))
    counts = torch.bincount(codes, minlength=vocab_size).unsqueeze(1).double()
    sums = torch.zeros(vocab_size, patches.shape[1], dtype=torch.double).index_add_(0, codes, patches.double())
    means = torch.where(counts > 0, sums / counts.clamp_min(1), patches.double().mean(0))
    tokenizer.patch_centroids.copy_(means.float())
    return tokenizer


def fit_tokenizer_on_data(
    datamodule: Any, backbone: ViTConfig, codebook: CodebookConfig
) -> tuple[KMeansTokenizer, list[CodebookStats]]:
    """Fit a tokenizer for ``backbone``'s patch grid on an :class:`~sslvit.data.SSLDataModule`'s data.

    Samples ``vocab_size * patches_per_code`` patches of training images (training transform) and a
    quarter as many held-out patches of the validation split (same transform) for the statistics.
    """
    codebook = codebook.resolved(backbone.img_size)
    vocab = codebook.vocab_size
    start = time.perf_counter()
    transform = datamodule.train_transform()
    common = dict(
        patch_size=backbone.patch_size,
        grid_size=backbone.grid_size,
        seed=codebook.seed,
        num_workers=datamodule.num_workers,
    )
    train = datamodule.build_dataset("pretrain", transform)
    patches = sample_patches(train, vocab * codebook.patches_per_code, codebook.patches_per_image, **common)
    tokenizer = fit_kmeans_tokenizer(
        patches,
        vocab,
        backbone.patch_size,
        backbone.img_size,
        backbone.in_chans,
        codebook.color_weight,
        codebook.iterations,
        codebook.seed,
        datamodule.mean,
        datamodule.std,
    )
    held_out = sample_patches(
        datamodule.build_dataset("val", transform), max(1, len(patches) // 4), codebook.patches_per_image, **common
    )
    stats = [codebook_stats(tokenizer, patches, "fit sample"), codebook_stats(tokenizer, held_out, "held-out val")]
    tokenizer.info = {
        "fit": {
            **asdict(codebook),
            "dataset": datamodule.dataset_name,
            "root": str(datamodule.root),
            "num_patches": len(patches),
            "transform": "training transform of the data module",
            "faiss": faiss.__version__,
            "seconds": round(time.perf_counter() - start, 1),
        },
        "stats": [asdict(s) for s in stats],
    }
    return tokenizer, stats


def describe(tokenizer: KMeansTokenizer, stats: list[CodebookStats]) -> str:
    """A few lines for the console: what was fitted and the coverage table."""
    fit = tokenizer.info.get("fit", {})
    p = tokenizer.patch_size
    lines = [
        f"k-means tokenizer: {tokenizer.vocab_size} codes for {p}x{p} patches ({tokenizer.grid_size}x"
        f"{tokenizer.grid_size} grid of {tokenizer.image_size}px images), "
        f"color_weight {float(tokenizer.color_weight)}, "
        f"fitted on {fit.get('num_patches', 0):,} patches of {fit.get('dataset')} in {fit.get('seconds')} s",
        *([f"data: {fit['root']}"] if fit.get("dataset") not in (None, "digits") else []),
        CodebookStats.HEADER,
        *(s.row() for s in stats),
    ]
    return "\n".join(lines)
