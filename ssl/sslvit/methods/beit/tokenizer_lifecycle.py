"""Where a BEiT model's codebook comes from, and the checks that keep it the same from run to resumed run.

The codebook lives in the model's tokenizer buffers, so every checkpoint carries it. :class:`TokenizerLifecycle`
fills them and guards them:

- when training starts: from ``model.tokenizer`` (a tokenizer directory) or, when that is unset, fitted on
  the training data by rank 0, saved to ``<run dir>/tokenizer`` and broadcast to every rank (no shared file
  system needed);
- on first use outside training (``model(images)``): from ``model.tokenizer``;
- once restored from a checkpoint (resume, ``sslvit validate``): checked against the settings given now,
  which may not change it (another tokenizer directory, another ``color_weight``, another normalization).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from sslvit.errors import ConfigError
from sslvit.methods.beit.tokenizer import KMeansTokenizer, load_tokenizer
from sslvit.methods.beit.tokenizer_fit import CodebookConfig, describe, fit_tokenizer_on_data
from sslvit.nn.backbone import ViTConfig


class TokenizerLifecycle:
    """Fills and checks ``tokenizer``, the model's own tokenizer module (its buffers are the codebook).

    Args:
        tokenizer: the BEiT model's tokenizer, sized by ``codebook.vocab_size`` (the prediction head's width).
        backbone: the model's backbone, which a tokenizer must match (patch size, grid, channels).
        codebook: how a codebook is fitted when ``directory`` is None.
        directory: ``model.tokenizer``, a fitted tokenizer's directory, or None to fit one when training starts.
    """

    def __init__(
        self, tokenizer: KMeansTokenizer, backbone: ViTConfig, codebook: CodebookConfig, directory: str | None
    ) -> None:
        self.tokenizer, self.backbone, self.codebook, self.directory = tokenizer, backbone, codebook, directory
        self.info: dict[str, Any] = {}  # where the codebook came from; checkpoints store it as tokenizer_info

    @property
    def fitted(self) -> bool:
        return bool(self.tokenizer.fitted)

    def set(self, tokenizer: KMeansTokenizer, source: str) -> None:
        """Copy a fitted tokenizer's codebook into the model after checking it fits the backbone and head."""
        tokenizer.check_matches(self.backbone, f"tokenizer {source}")
        if tokenizer.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"tokenizer {source} has {tokenizer.vocab_size} codes but model.codebook.vocab_size="
                f"{self.tokenizer.vocab_size} sizes the prediction head: set model.codebook.vocab_size "
                f"{tokenizer.vocab_size} or use a tokenizer fitted with this config"
            )
        self.tokenizer.load_state_dict(tokenizer.state_dict())
        self.info = {"source": source, **tokenizer.settings(), **tokenizer.info}

    def load_if_needed(self) -> None:
        """Before the codebook is first used outside training: load ``directory``, or say how to get one."""
        if self.fitted:
            return
        if not self.directory:
            raise ConfigError(
                "BEiT has no codebook yet: set model.tokenizer to a tokenizer directory, restore a BEiT "
                "checkpoint (--ckpt_path), or train with `sslvit fit`, which fits one when model.tokenizer is unset"
            )
        self.set(load_tokenizer(self.directory), self.directory)

    def on_fit_start(self, trainer: Any) -> None:
        """After a resumed checkpoint is restored (so resuming never refits), before the sanity check: check a
        restored codebook, or load ``directory``, or fit, save and broadcast a new one."""
        datamodule = getattr(trainer, "datamodule", None)
        if self.fitted:
            self.check_restored(datamodule)
            return
        path = self.directory
        if path is None:
            if datamodule is None:
                raise ConfigError("model.tokenizer is not set and there is no data module to fit one on: set it")
            path = str(Path(trainer.default_root_dir) / "tokenizer")
            tokenizer = self._fitted_on_rank_zero(trainer, datamodule, path)
        else:
            tokenizer = load_tokenizer(path)
        self.set(tokenizer, path)
        if datamodule is not None:
            self.check_normalization(datamodule, path)

    def fit(self, datamodule: Any) -> KMeansTokenizer:
        """A k-means tokenizer fitted (``codebook`` settings) on a data module's data; its coverage is printed."""
        tokenizer, stats = fit_tokenizer_on_data(datamodule, self.backbone, self.codebook)
        rank_zero_info(describe(tokenizer, stats))
        return tokenizer

    def _fitted_on_rank_zero(self, trainer: Any, datamodule: Any, path: str) -> KMeansTokenizer:
        """Rank 0 fits and saves to ``path``; every rank gets the codebook by broadcast."""
        payload = None
        if trainer.is_global_zero:
            fitted = self.fit(datamodule)
            fitted.save(path)
            rank_zero_info(f"BEiT: tokenizer saved to {path} (every checkpoint stores it too)")
            payload = (fitted.centroids, fitted.patch_centroids, fitted.settings(), fitted.info)
        centroids, patch_centroids, settings, info = trainer.strategy.broadcast(payload, src=0)
        tokenizer = KMeansTokenizer.from_codebook(centroids, patch_centroids, settings)
        tokenizer.info = info
        return tokenizer

    def check_normalization(self, datamodule: Any, source: str) -> None:
        """The codes depend on the pixel normalization: the data must use the one the tokenizer was fitted with."""
        fitted = torch.stack([self.tokenizer.pixel_mean, self.tokenizer.pixel_std]).cpu()
        given = torch.tensor([datamodule.mean, datamodule.std], dtype=torch.float)
        if not torch.allclose(fitted, given, atol=1e-6):
            raise ConfigError(
                f"tokenizer {source} was fitted on images normalized with mean={fitted[0].tolist()}, "
                f"std={fitted[1].tolist()} but data.mean={list(datamodule.mean)}, data.std={list(datamodule.std)}: "
                "use the same normalization or refit the tokenizer"
            )

    def check_restored(self, datamodule: Any | None) -> None:
        """A codebook restored from a checkpoint must agree with the settings given now: refuse, never ignore.

        The tokenizer directory named by ``model.tokenizer`` must hold this very codebook, ``codebook.color_weight``
        must be the one it was fitted with, and the data must be normalized as its images were.
        """
        source = self.info.get("source", "restored from the checkpoint")
        path = self.directory
        if path is not None and str(path) != str(source):
            given = load_tokenizer(path)
            if given.centroids.shape != self.tokenizer.centroids.shape or not torch.equal(
                given.centroids, self.tokenizer.centroids.cpu()
            ):
                raise ConfigError(
                    f"model.tokenizer={path} is not the codebook this run was trained with (the checkpoint holds the "
                    f"one from {source}): drop model.tokenizer to keep the run's codebook, or start a new run to use it"
                )
        stored, asked = round(float(self.tokenizer.color_weight), 6), round(self.codebook.color_weight, 6)
        if stored != asked:
            raise ConfigError(
                f"model.codebook.color_weight={asked} but the checkpoint's codebook was fitted with {stored}: the "
                "codes would not change; keep the run's setting or start a new run to fit a new codebook"
            )
        if datamodule is not None:
            self.check_normalization(datamodule, source)
