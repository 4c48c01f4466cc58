"""The papers' linear probe: augmented train images through the frozen encoder every epoch (MAE: 90 epochs,
RandomResizedCrop scale 0.08-1 + flip, batch 256), the heads and selection rule of :mod:`sslvit.eval.linear`.

Slow on a CPU (every epoch encodes the whole train split), so :func:`sslvit.eval.linear_probe` on cached
features is the default of ``tools/linear_probe.py``; this path is ``--protocol``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from sslvit.eval.encode import Precision, encode, feature_dim
from sslvit.eval.features import Features, dataset_features, dataset_targets
from sslvit.eval.linear import PROTOCOL_SETTINGS, ProbeSettings, num_classes_of
from sslvit.eval.selection import LinearProbeResult


def probe_transform(image_size: int, mean: Sequence[float], std: Sequence[float], crop_scale=(0.08, 1.0)) -> Callable:
    """The protocol's training augmentation: RandomResizedCrop (bicubic) + horizontal flip, normalized."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class AugmentedHeads:
    """Heads trained on augmented train images through the frozen encoder: the protocol's way to train heads
    for :meth:`ProbeSettings.choose`, called once to choose on held-out images and once to retrain.

    ``val`` counts the classes with the train labels; ``indices`` restricts training to those train images
    (a low-shot subset); ``progress(epoch, seconds)`` is called after each epoch, counted over both calls.
    """

    def __init__(
        self,
        backbone: nn.Module,
        datamodule: Any,
        val: Features,
        pooling: str,
        settings: ProbeSettings,
        crop_scale: Sequence[float],
        device: torch.device | str,
        precision: Precision,
        indices: Sequence[int] | None = None,
        progress: Callable[[int, float], None] | None = None,
    ) -> None:
        self.start = time.perf_counter()
        self.backbone, self.datamodule, self.pooling, self.settings = backbone, datamodule, pooling, settings
        self.device, self.precision, self.progress = device, precision, progress
        transform = probe_transform(datamodule.image_size, datamodule.mean, datamodule.std, crop_scale)
        self.dataset = datamodule.build_dataset("train", transform)
        self.pool = list(range(len(self.dataset))) if indices is None else [int(i) for i in indices]
        self.targets = torch.tensor(dataset_targets(self.dataset))[self.pool]  # [len(pool)]
        self.num_classes = num_classes_of(val.labels, self.targets)
        self.epochs_done = 0

    def __call__(self, positions: Sequence[int] | None, test: Features, lrs: Sequence[float]) -> dict:
        """Heads for ``lrs`` trained on the pool's ``positions`` (None: all of it), scored on ``test``."""
        s, device = self.settings, self.device
        chosen = self.pool if positions is None else [self.pool[p] for p in positions]
        workers = self.datamodule.num_workers
        loader = DataLoader(
            Subset(self.dataset, chosen),
            batch_size=s.batch_size,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(s.seed),
            persistent_workers=workers > 0,
            pin_memory=torch.device(device).type == "cuda",
        )
        trainer = s.trainer(feature_dim(self.backbone, self.pooling), self.num_classes, lrs, len(loader), device)
        for _ in range(s.epochs):
            for images, labels in loader:
                if len(labels) > 1:  # BatchNorm needs two samples
                    features = encode(self.backbone, images.to(device, non_blocking=True), self.pooling, self.precision)
                    trainer.train_step(features, labels)
            if self.progress is not None:
                self.progress(self.epochs_done, time.perf_counter() - self.start)
            self.epochs_done += 1
        return trainer.evaluate(test)

    def held_features(self, positions: Sequence[int]) -> Features:
        """Features of the pool's held-out ``positions`` with the evaluation transform, as val's are."""
        held = [self.pool[p] for p in positions]
        return dataset_features(
            self.backbone,
            self.datamodule,
            "train",
            self.pooling,
            self.settings.batch_size,
            self.device,
            indices=held,
            precision=self.precision,
        )


def linear_probe_protocol(
    backbone: nn.Module,
    datamodule: Any,
    val: Features,
    pooling: str = "cls",
    settings: ProbeSettings = PROTOCOL_SETTINGS,
    crop_scale: Sequence[float] = (0.08, 1.0),
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    indices: Sequence[int] | None = None,
    precision: Precision = "auto",
) -> LinearProbeResult:
    """Protocol path: augmented images of the ``train`` split through the frozen backbone every epoch.

    ``val`` holds the val features (eval transform, e.g. from the cache); ``progress(epoch, seconds)``
    is called after each epoch; ``indices`` restricts training to those train images (a low-shot
    subset). With held-out selection the held-out images are scored with features of the evaluation
    transform, as val is. ``precision``: of the encoder (:func:`sslvit.eval.encode.encode`).
    """
    heads = AugmentedHeads(
        backbone, datamodule, val, pooling, settings, crop_scale, device, precision, indices, progress
    )
    result = settings.choose(heads, heads.held_features, heads.targets, val)
    result.settings = {
        "path": "protocol",
        **settings.record(),
        "crop_scale": list(crop_scale),
        "num_train": len(heads.pool),
        "num_val": len(val),
        "feature_dim": val.dim,
    }
    result.seconds = time.perf_counter() - heads.start
    return result
