"""Visual tokenizers for BEiT: one discrete code per patch of the backbone's grid, frozen, no download.

:class:`VisualTokenizer` is the interface: images ``[N, C, H, W]`` (normalized as the model sees
them) -> code ids ``[N, L]``, row-major on the grid of ``patch_size`` patches, computed without
gradients. :class:`KMeansTokenizer` implements it with a codebook fitted by Faiss k-means on patches
of the training data (:mod:`sslvit.methods.beit.tokenizer_fit`); codes are assigned by nearest centroid.

A patch is described by its *shape* (pixels minus the patch's per-channel mean, divided by its
contrast, scaled to norm <= 1) followed by a cheap descriptor, ``color_weight * (mean colour, contrast)``,
so that a red and a blue patch of the same structure get different codes unless ``color_weight`` is 0.

On disk a tokenizer is a directory: ``codebook.safetensors`` (tensors) and ``tokenizer.json``
(settings, how it was fitted, coverage statistics).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn

from sslvit.checkpoints.io import safe_load
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.errors import ConfigError
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.masking import patchify, unpatchify

TOKENIZER_JSON, CODEBOOK_FILE = "tokenizer.json", "codebook.safetensors"
FORMAT_VERSION = 1
# Contrast below ~sqrt(SHAPE_EPS) (in normalized-pixel units, ~6/255 of raw intensity) counts as flat:
# the shape of a near-uniform patch shrinks towards zero instead of amplifying JPEG noise.
SHAPE_EPS = 1e-2
ASSIGN_CHUNK = 65536  # patches per Faiss / matmul call when assigning codes


def patch_features(patches: torch.Tensor, in_chans: int, color_weight: float) -> torch.Tensor:
    """patches [M, p*p*C] (row, col, channel order) -> features [M, p*p*C + C + 1].

    ``[shape, color_weight * mean colour (C), color_weight * contrast (1)]`` where
    shape = (pixels - per-channel mean) / sqrt(contrast^2 + SHAPE_EPS) / sqrt(p*p*C).
    """
    m, size = patches.shape
    x = patches.float().view(m, size // in_chans, in_chans)
    colour = x.mean(dim=1)  # [M, C]
    centred = x - colour.unsqueeze(1)
    contrast = centred.pow(2).mean(dim=(1, 2)).sqrt()  # [M]
    shape = centred.flatten(1) / (contrast.pow(2) + SHAPE_EPS).sqrt().unsqueeze(1) / size**0.5
    return torch.cat([shape, color_weight * colour, color_weight * contrast.unsqueeze(1)], dim=1)


class VisualTokenizer(nn.Module, ABC):
    """Maps images [N, C, H, W] to code ids [N, L] in ``[0, vocab_size)``, one per ``patch_size`` patch.

    Args:
        vocab_size: number of distinct codes.
        patch_size: side in pixels of the image area one code describes.
        image_size: side of the images it was built for; with ``patch_size`` it fixes the grid.
        in_chans: image channels.
    """

    def __init__(self, vocab_size: int, patch_size: int, image_size: int, in_chans: int = 3) -> None:
        super().__init__()
        if vocab_size < 2 or patch_size < 1 or image_size % patch_size:
            raise ConfigError(
                f"tokenizer needs vocab_size >= 2 and image_size divisible by patch_size, got vocab_size="
                f"{vocab_size}, image_size={image_size}, patch_size={patch_size}"
            )
        self.vocab_size, self.patch_size, self.image_size, self.in_chans = vocab_size, patch_size, image_size, in_chans

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> codes [N, L] (int64)."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def check_matches(self, backbone: ViTConfig, source: str = "the tokenizer") -> None:
        """Raise a ConfigError unless patches, grid and channels are those of ``backbone``."""
        g, bg = self.grid_size, backbone.grid_size
        if (self.patch_size, g, self.in_chans) != (backbone.patch_size, bg, backbone.in_chans):
            raise ConfigError(
                f"{source} does not match the backbone: it codes {self.patch_size}px patches on a {g}x{g} grid "
                f"({self.image_size}px images, {self.in_chans} channels) but model.backbone has patch_size="
                f"{backbone.patch_size} and a {bg}x{bg} grid (img_size={backbone.img_size}, in_chans="
                f"{backbone.in_chans}). Fit a tokenizer for this backbone: python tools/fit_tokenizer.py "
                "--config <this config> --output DIR, or leave model.tokenizer unset to fit one when training starts"
            )


class KMeansTokenizer(VisualTokenizer):
    """Nearest-centroid codes over per-patch features (:func:`patch_features`), assigned with Faiss.

    All state is in buffers, so a module holding it (BEiT) saves and restores the codebook with its
    checkpoints: ``centroids`` [V, F] in feature space, ``patch_centroids`` [V, p*p*C] the mean patch
    of each code in normalized pixels (for :meth:`decode` and error statistics), the ``pixel_mean`` /
    ``pixel_std`` the images were normalized with, ``color_weight`` and ``fitted``.
    On a CUDA device codes are assigned by a chunked matmul argmin (the same L2 nearest centroid),
    which avoids copying every patch to the host for Faiss.
    """

    def __init__(
        self,
        vocab_size: int,
        patch_size: int,
        image_size: int,
        in_chans: int = 3,
        color_weight: float = 0.5,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__(vocab_size, patch_size, image_size, in_chans)
        if color_weight < 0:
            raise ConfigError(f"codebook.color_weight must be non-negative, got {color_weight}")
        size = patch_size * patch_size * in_chans
        self.register_buffer("centroids", torch.zeros(vocab_size, size + in_chans + 1))
        self.register_buffer("patch_centroids", torch.zeros(vocab_size, size))
        self.register_buffer("color_weight", torch.tensor(float(color_weight)))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float))
        self.register_buffer("fitted", torch.tensor(False))
        self.info: dict[str, Any] = {}  # how it was fitted and its statistics, saved to tokenizer.json
        self._index: tuple[Any, faiss.Index] | None = None

    # ---- codes ----
    def features(self, patches: torch.Tensor) -> torch.Tensor:
        return patch_features(patches, self.in_chans, float(self.color_weight))

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """features [M, F] -> nearest centroid ids [M] (int64), in chunks of ASSIGN_CHUNK."""
        if not bool(self.fitted):
            raise RuntimeError(
                "the k-means tokenizer has no codebook yet: fit one (tools/fit_tokenizer.py or "
                "sslvit.methods.beit.tokenizer_fit.fit_kmeans_tokenizer) or load one with load_tokenizer(path)"
            )
        if features.is_cuda:
            return torch.cat([self._assign_matmul(chunk) for chunk in features.split(ASSIGN_CHUNK)])
        index = self._faiss_index()
        codes = [index.search(np.ascontiguousarray(c.float().numpy()), 1)[1] for c in features.split(ASSIGN_CHUNK)]
        return torch.from_numpy(np.concatenate(codes)[:, 0]).long()

    def _assign_matmul(self, x: torch.Tensor) -> torch.Tensor:
        c = self.centroids.to(x)
        return (c.pow(2).sum(1) - 2.0 * x @ c.T).argmin(dim=1)  # ||x||^2 is the same for every centroid

    def _faiss_index(self) -> faiss.Index:
        # Rebuilt whenever the centroid tensor is replaced or written in place (load_state_dict, fitting).
        key = (self.centroids.data_ptr(), self.centroids._version)
        if self._index is None or self._index[0] != key:
            index = faiss.IndexFlatL2(self.centroids.shape[1])
            index.add(np.ascontiguousarray(self.centroids.detach().float().cpu().numpy()))
            self._index = (key, index)
        return self._index[1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> codes [N, L]; features in float32 even under autocast."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"the tokenizer expects {self.in_chans}-channel images, got {images.shape[1]}")
        with torch.autocast(images.device.type, enabled=False):
            patches = patchify(images.float(), self.patch_size)  # [N, L, P]
            codes = self.assign(self.features(patches.flatten(0, 1)))
        return codes.to(images.device).view(images.shape[0], -1)

    def decode(self, codes: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """codes [N, L] -> images [N, C, H, W] made of each code's mean patch (normalized pixels)."""
        patches = self.patch_centroids[codes]  # [N, L, P]
        return unpatchify(patches, self.patch_size, grid_size, self.in_chans)

    # ---- files ----
    def settings(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "type": "kmeans",
            "vocab_size": self.vocab_size,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "color_weight": round(float(self.color_weight), 6),
            "mean": [round(v, 6) for v in self.pixel_mean.tolist()],
            "std": [round(v, 6) for v in self.pixel_std.tolist()],
            "features": f"shape (p*p*C, per-patch normalized, eps {SHAPE_EPS}), color_weight * (colour, contrast)",
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``codebook.safetensors`` and ``tokenizer.json`` into ``directory`` (created if missing)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids, "patch_centroids": self.patch_centroids}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(directory / CODEBOOK_FILE))
        # The settings describe the codebook and are what load_tokenizer rebuilds it from: info is
        # added around them and never replaces one of them.
        meta = {**self.info, **self.settings()}
        (directory / TOKENIZER_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_codebook(
        cls, centroids: torch.Tensor, patch_centroids: torch.Tensor, settings: dict[str, Any]
    ) -> KMeansTokenizer:
        """A fitted tokenizer from its tensors and the ``settings()`` dict."""
        keys = ("vocab_size", "patch_size", "image_size", "in_chans", "color_weight", "mean", "std")
        tokenizer = cls(**{k: settings[k] for k in keys})
        if centroids.shape != tokenizer.centroids.shape or patch_centroids.shape != tokenizer.patch_centroids.shape:
            raise ConfigError(
                f"codebook shapes {tuple(centroids.shape)} / {tuple(patch_centroids.shape)} do not fit the settings "
                f"(expected {tuple(tokenizer.centroids.shape)} / {tuple(tokenizer.patch_centroids.shape)})"
            )
        tokenizer.centroids.copy_(centroids)
        tokenizer.patch_centroids.copy_(patch_centroids)
        tokenizer.fitted.fill_(True)
        return tokenizer


def load_tokenizer(path: str | Path) -> KMeansTokenizer:
    """Load a tokenizer directory written by :meth:`KMeansTokenizer.save` (or ``tools/fit_tokenizer.py``)."""
    path = Path(path)
    meta_file, codebook_file = path / TOKENIZER_JSON, path / CODEBOOK_FILE
    if not meta_file.is_file() or not codebook_file.is_file():
        raise ConfigError(
            f"model.tokenizer={str(path)!r} is not a tokenizer directory: it needs {TOKENIZER_JSON} and "
            f"{CODEBOOK_FILE}. Create one with: python tools/fit_tokenizer.py --config <config> --output {path}"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{meta_file} is not valid JSON ({err}): refit it with tools/fit_tokenizer.py") from None
    if meta.get("type") != "kmeans" or meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{meta_file} describes a {meta.get('type')!r} tokenizer of format {meta.get('format_version')}; this "
            f"version of sslvit reads 'kmeans' tokenizers of format {FORMAT_VERSION}: refit with tools/fit_tokenizer.py"
        )
    tensors = safe_load(codebook_file)
    tokenizer = KMeansTokenizer.from_codebook(tensors["centroids"], tensors["patch_centroids"], meta)
    tokenizer.info = {k: v for k, v in meta.items() if k not in tokenizer.settings()}
    return tokenizer
