"""Online evaluation during pretraining: what every callback that encodes a split every few epochs shares
(:class:`OnlineEvaluation`), and the online kNN. They read ``pl_module.backbone`` (or, for ``native``
features, the method), so they work for every method."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from sslvit.data.datasets import class_balanced_subset
from sslvit.errors import ConfigError
from sslvit.eval.features import dataset_features, dataset_targets, feature_dim
from sslvit.eval.knn import KNNClassifier
from sslvit.nn.backbone import VisionTransformer


def encoded_model(pl_module: L.LightningModule, pooling: str) -> Any:
    """What an online evaluation encodes: the method itself for its native features, else its backbone."""
    return pl_module if pooling == "native" else pl_module.backbone


class OnlineEvaluation(Callback):
    """An evaluation of the encoder every ``every_n_epochs`` epochs and when training ends (``max_epochs``,
    ``max_steps``, or a callback such as TimeBudget stopping the run), logged under the names of ``logged``.

    A subclass implements :meth:`evaluate` (the model as it is now -> metrics) and names what it logs.
    Features come from :func:`sslvit.eval.features.extract_features`: eval mode, no gradients, the global
    RNG untouched, so training is the same with or without the callback; under DDP every rank encodes a
    shard and receives all features, so every rank computes and logs the same value. With
    ``compare_random_init``, the last evaluation is repeated with a random initialisation of the same
    architecture (seeded by ``seed``, the global RNG untouched), logged as ``random_init_name``, and both are
    printed: the evidence that pretraining changed something.
    """

    #: metric of :meth:`evaluate` -> (name it is logged under, shown in the progress bar); the first is the headline
    logged: ClassVar[dict[str, tuple[str, bool]]]
    #: the headline of the random initialisation (with ``compare_random_init``)
    random_init_name: ClassVar[str]
    #: what the evaluation reads from the data module (for the error when there is none)
    reads: ClassVar[str]
    #: printed after the headline value and after its difference to the random initialisation
    units: ClassVar[tuple[str, str]] = ("", "")

    def __init__(
        self, every_n_epochs: int, pooling: str, batch_size: int | None, seed: int, compare_random_init: bool
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs, self.pooling, self.batch_size = every_n_epochs, pooling, batch_size
        self.seed, self.compare_random_init = seed, compare_random_init
        self.history: list[dict[str, float]] = []

    def evaluate(self, model: Any, datamodule: Any) -> dict[str, float]:
        """Metrics of ``model`` (the backbone, or the method for ``native``) as it is now."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the headline is, for the printed comparison with a random initialisation."""
        raise NotImplementedError

    def _model(self, pl_module: L.LightningModule) -> Any:
        return encoded_model(pl_module, self.pooling)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before training: an sslvit data module, a module with a backbone, a pooling that exists for it, and
        data the evaluation can use (:meth:`prepare`)."""
        name = type(self).__name__
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "eval_dataloader"):
            raise ConfigError(
                f"{name} needs the trainer's datamodule to be an sslvit.data.SSLDataModule ({self.reads} through "
                "eval_dataloader); fit was given no such datamodule"
            )
        if getattr(pl_module, "backbone", None) is None:
            raise ConfigError(f"{name} needs pl_module.backbone; {type(pl_module).__name__} has none")
        feature_dim(self._model(pl_module), self.pooling)  # a bad pooling fails before training starts
        self.prepare(datamodule)

    def prepare(self, datamodule: Any) -> None:
        """Choose the images evaluated (once); raise a ConfigError when the data cannot serve."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = (
            (trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch)
            or 0 < trainer.max_steps <= trainer.global_step
            or trainer.should_stop  # a wall-clock budget (TimeBudget) or another callback ends the run here
        )
        if trainer.sanity_checking or (epoch % self.every_n_epochs and not last):
            return
        metrics = self.evaluate(self._model(pl_module), trainer.datamodule)
        self.history.append({"epoch": epoch, "step": trainer.global_step, **metrics})
        # Every rank holds the same value (features are gathered); sync_dist averages identical
        # numbers, which keeps Lightning from warning about epoch-level metrics under DDP.
        for key, (name, prog_bar) in self.logged.items():
            pl_module.log(name, metrics[key], prog_bar=prog_bar, on_epoch=True, sync_dist=True)
        if last and self.compare_random_init:
            headline = next(iter(self.logged))
            baseline = self.evaluate_random_init(pl_module, trainer.datamodule)[headline]
            pl_module.log(self.random_init_name, baseline, on_epoch=True, sync_dist=True)
            trained, (unit, difference) = metrics[headline], self.units
            rank_zero_info(
                f"{self.describe()} after {trainer.global_step} steps: {trained:.2f}{unit}; a random initialisation "
                f"of the same architecture: {baseline:.2f}{unit} ({trained - baseline:+.2f}{difference})"
            )

    def evaluate_random_init(self, pl_module: L.LightningModule, datamodule: Any) -> dict[str, float]:
        """:meth:`evaluate` with a random initialisation of the backbone in its place (for ``native``, inside
        the method for the duration of the call, so the method's own feature is read from random weights)."""
        trained = pl_module.backbone
        random_backbone = self.random_init_like(trained).eval()
        if self.pooling != "native":
            return self.evaluate(random_backbone, datamodule)
        pl_module.backbone = random_backbone
        try:
            return self.evaluate(pl_module, datamodule)
        finally:
            pl_module.backbone = trained

    def random_init_like(self, backbone: VisionTransformer) -> VisionTransformer:
        """A freshly initialised backbone of ``backbone``'s architecture, on its device, from ``seed`` alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return VisionTransformer(backbone.config).to(next(backbone.parameters()).device)


class OnlineKNN(OnlineEvaluation):
    """kNN top-1 of the backbone every ``every_n_epochs`` epochs and when training ends (``max_epochs``
    or ``max_steps``): the val split is classified against a class-balanced subset of the labelled
    train split, ``knn/top1`` goes to the progress bar and the logger, ``knn/top5`` to the logger.
    Training is the same with or without it, and every rank logs the same accuracy, so a checkpoint
    callback can monitor it (:class:`OnlineEvaluation`).

    Args:
        every_n_epochs: evaluate after epochs ``n, 2n, ...``.
        train_subset: images of the labelled train split in the bank (class-balanced, fixed seed);
            None uses all of them.
        k: neighbours that vote (DINO: 20); temperature: T of the vote weights exp(sim / T).
        pooling: ``cls``, ``mean``, ``cls_last<n>``, or ``native``: the method's own feature
            (:meth:`~sslvit.methods.base.SSLMethod.native_features`, e.g. CPC's patch-grid mean).
        batch_size: images per forward pass (default: the data module's batch size).
        compare_random_init: at the last evaluation, also classify with a random initialisation of the
            same architecture (seeded by ``seed``; the global RNG is untouched), log it as
            ``knn/random_init_top1`` and print both: the evidence that pretraining learned something.
    """

    logged = {"top1": ("knn/top1", True), "top5": ("knn/top5", False)}
    random_init_name = "knn/random_init_top1"
    reads = "labelled train and val splits"
    units = ("%", " points")

    def __init__(
        self,
        every_n_epochs: int = 5,
        train_subset: int | None = 10000,
        k: int = 20,
        temperature: float = 0.07,
        pooling: str = "cls",
        batch_size: int | None = None,
        seed: int = 0,
        compare_random_init: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, pooling, batch_size, seed, compare_random_init)
        if train_subset is not None and train_subset < k:
            raise ConfigError(f"OnlineKNN.train_subset={train_subset} must be at least k={k}")
        self.train_subset = train_subset
        self.knn = KNNClassifier(ks=(k,), k=k, temperature=temperature)
        self._bank_indices: list[int] | None = None

    def prepare(self, datamodule: Any) -> None:
        bank = self._bank(datamodule)
        if len(bank) < self.knn.k:
            raise ConfigError(f"OnlineKNN: the labelled train split has {len(bank)} images, fewer than k={self.knn.k}")

    def _bank(self, datamodule: Any) -> list[int]:
        """Indices of the train images in the bank (chosen once)."""
        if self._bank_indices is None:
            targets = dataset_targets(datamodule.build_dataset("train", None))
            if self.train_subset is not None and self.train_subset < len(targets):
                self._bank_indices = class_balanced_subset(targets, self.train_subset, self.seed)
            else:
                self._bank_indices = list(range(len(targets)))
        return self._bank_indices

    def evaluate(self, backbone: Any, datamodule: Any) -> dict[str, float]:
        """kNN accuracy (percent) of the backbone (or, for ``native``, the method) as it is now:
        ``{"top1", "top5", "seconds"}``."""
        start = time.perf_counter()
        device = next(backbone.parameters()).device
        size = self.batch_size or datamodule.batch_size
        indices = self._bank(datamodule)
        bank = dataset_features(backbone, datamodule, "train", self.pooling, size, device, indices=indices)
        val = dataset_features(backbone, datamodule, "val", self.pooling, size, device)
        result = self.knn.fit(bank.features, bank.labels).evaluate(val.features, val.labels)
        return {"top1": result.top1, "top5": result.top5, "seconds": time.perf_counter() - start}

    def describe(self) -> str:
        return f"kNN top-1 ({self.pooling} features, k = {self.knn.k})"
