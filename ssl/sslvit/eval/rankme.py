"""RankMe, a label-free monitor: the effective rank of the embeddings (Garrido et al., ICML 2023, "RankMe:
Assessing the downstream performance of pretrained self-supervised representations by their rank").

:func:`effective_rank` is the measure on a feature matrix; :class:`OnlineRankMe` logs it during pretraining
from the images alone (an unlabelled folder is enough), as :class:`~sslvit.eval.OnlineKNN` logs kNN accuracy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from sslvit.data.datasets import SPLITS, Split
from sslvit.errors import ConfigError, DatasetUnavailableError
from sslvit.eval.features import dataset_features
from sslvit.eval.online import OnlineEvaluation

#: the paper's epsilon (added to every normalised singular value so that log p is finite)
EPSILON = 1e-7
#: the number of embeddings the paper computes RankMe on ("provides a highly accurate estimate")
PAPER_NUM_IMAGES = 25600


def effective_rank(features: torch.Tensor, epsilon: float = EPSILON) -> float:
    """RankMe of a feature matrix ``[N, D]``: ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / ||s||_1 + epsilon``,
    ``s`` the ``min(N, D)`` singular values of the matrix (the paper's Eq. 1 and 2).

    As in the paper, the features are not centred (the mean embedding is one of the directions counted)
    and not normalised per sample; the measure does not change when all of them are scaled. The singular
    values are computed in float64 on the CPU, whatever the dtype and device of ``features``.

    Bounds: with ``epsilon = 0`` (the effective rank of Roy and Vetterli) ``1 <= RankMe <= rank(Z) <= min(N, D)``:
    1 when every row is a multiple of one vector (a collapsed encoder), ``k`` for exactly ``k`` equal non-zero
    singular values. The paper's ``epsilon = 1e-7`` keeps ``RankMe >= 1`` and lifts the top by at most a factor
    ``1 + m * epsilon * (ln m - 1)``, ``m = min(N, D)`` (6e-4 at m = 1024, when all singular values are equal);
    rank-1 features give ``1 + m * 1.6e-6``. A zero matrix (the limit of collapse) gives 1; features with NaN
    or infinity give NaN.

    The value depends on ``N`` when ``N`` is not much larger than ``D``: isotropic Gaussian features give
    about ``D * (1 - D / (8 N))``, not ``D``. Compare runs at the same ``N`` (the paper uses 25,600).
    """
    if features.ndim != 2 or min(features.shape) == 0:
        raise ValueError(f"effective_rank needs a non-empty [N, D] matrix, got shape {tuple(features.shape)}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    matrix = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(matrix).all():
        return float("nan")
    singular = torch.linalg.svdvals(matrix)
    total = singular.sum()
    if total == 0:
        return 1.0
    p = singular / total + epsilon
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))  # xlogy: 0 log 0 = 0 when epsilon is 0


def image_subset(size: int, count: int | None, seed: int) -> list[int] | None:
    """Sorted positions of ``count`` of ``size`` images drawn with ``seed`` (no labels needed); None: all."""
    if count is None or count >= size:
        return None
    return sorted(np.random.default_rng(seed).permutation(size)[:count].tolist())


class OnlineRankMe(OnlineEvaluation):
    """RankMe of the encoder every ``every_n_epochs`` epochs and when training ends: no labels needed.

    Encodes a fixed, seeded subset of ``num_images`` images of ``split`` (``pretrain``, the images training
    reads: an unlabelled image folder is enough) with the deterministic eval transform, through the same
    extraction as :class:`~sslvit.eval.OnlineKNN` (eval mode, no gradients, the global RNG untouched; under
    DDP each rank encodes a shard and all ranks compute the same value), and logs :func:`effective_rank` of
    the features as ``rankme`` (progress bar) and ``rankme / min(N, D)`` as ``rankme/normalized``.

    Args:
        every_n_epochs: evaluate after epochs ``n, 2n, ...``.
        num_images: images encoded (the same ones every time); None: the whole split. The paper's 25,600
            (the default) estimates the rank well for D up to a few thousand; fewer is cheaper, but RankMe
            depends on N when N is not much larger than D: compare runs at the same number.
        split: ``pretrain`` (default), ``train`` or ``val`` (labelled splits need labels to exist, not to
            be used; an unlabelled folder's ``val/`` of images works too).
        pooling: ``native`` (default: the method's own feature, as the evaluation tools read it), ``cls``,
            ``mean`` or ``cls_last<n>``.
        batch_size: images per forward pass (default: the data module's batch size).
        seed: the subset of images, and the random initialisation of ``compare_random_init``.
        compare_random_init: at the last evaluation, also measure a random initialisation of the same
            architecture, log it as ``rankme/random_init`` and print both.
        epsilon: the paper's constant added to every normalised singular value.
    """

    logged = {"rank": ("rankme", True), "normalized": ("rankme/normalized", False)}
    random_init_name = "rankme/random_init"
    reads = "the images of a split"

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_images: int | None = PAPER_NUM_IMAGES,
        split: Split = "pretrain",
        pooling: str = "native",
        batch_size: int | None = None,
        seed: int = 0,
        compare_random_init: bool = False,
        epsilon: float = EPSILON,
    ) -> None:
        super().__init__(every_n_epochs, pooling, batch_size, seed, compare_random_init)
        if num_images is not None and num_images < 2:
            raise ConfigError(f"OnlineRankMe.num_images must be at least 2 (null: the whole split), got {num_images}")
        if split not in SPLITS:
            raise ConfigError(f"OnlineRankMe.split={split!r} is not a split; choose one of {list(SPLITS)}")
        if epsilon < 0:
            raise ConfigError(f"OnlineRankMe.epsilon must be >= 0, got {epsilon}")
        self.num_images, self.split, self.epsilon = num_images, split, epsilon
        self._indices: list[int] | None = None
        self._chosen = False

    def prepare(self, datamodule: Any) -> None:
        self.images(datamodule)  # a missing split fails before training starts

    def images(self, datamodule: Any) -> list[int] | None:
        """Positions of the encoded images in the split (chosen once; None: all of them)."""
        if not self._chosen:
            try:
                size = len(datamodule.build_dataset(self.split, None))
            except DatasetUnavailableError as err:
                message = f"OnlineRankMe.split={self.split!r}: {err}; the pretrain split always exists"
                raise ConfigError(message) from None
            if size < 2:
                raise ConfigError(f"OnlineRankMe: the {self.split} split has {size} image(s); RankMe needs at least 2")
            self._indices, self._chosen = image_subset(size, self.num_images, self.seed), True
        return self._indices

    def evaluate(self, model: Any, datamodule: Any) -> dict[str, float]:
        """RankMe of ``model`` (the backbone, or the method for ``native``) as it is now:
        ``{"rank", "normalized", "num_images", "dim", "seconds"}``."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        size = self.batch_size or datamodule.batch_size
        features = dataset_features(
            model,
            datamodule,
            self.split,
            self.pooling,
            size,
            device,
            indices=self.images(datamodule),
            require_labels=False,
        ).features
        rank = effective_rank(features, self.epsilon)
        n, dim = features.shape
        return {
            "rank": rank,
            "normalized": rank / min(n, dim),
            "num_images": n,
            "dim": dim,
            "seconds": time.perf_counter() - start,
        }

    def describe(self) -> str:
        count = self.num_images if self._indices is not None else "all"
        return f"RankMe ({self.pooling} features, {count} {self.split} images)"
