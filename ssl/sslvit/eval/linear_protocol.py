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
from sslvit.eval.linear import DEFAULT_BASE_LRS, OptimizerName, ProbeTrainer, check_probe_settings, num_classes_of
from sslvit.eval.selection import LinearProbeResult, Selection, choose_and_report


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


def linear_probe_protocol(
    backbone: nn.Module,
    datamodule: Any,
    val: Features,
    pooling: str = "cls",
    base_lrs: Sequence[float] | None = None,
    epochs: int = 90,
    batch_size: int = 256,
    warmup_epochs: float = 10,
    optimizer: OptimizerName = "lars",
    momentum: float = 0.9,
    crop_scale: Sequence[float] = (0.08, 1.0),
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    indices: Sequence[int] | None = None,
    selection: Selection = "held_out",
    held_out_fraction: float = 0.1,
    precision: Precision = "auto",
) -> LinearProbeResult:
    """Protocol path: augmented images of the ``train`` split through the frozen backbone every epoch.

    ``val`` holds the val features (eval transform, e.g. from the cache); ``progress(epoch, seconds)``
    is called after each epoch; ``indices`` restricts training to those train images (a low-shot
    subset). With ``selection="held_out"`` the held-out images are scored with features of the
    evaluation transform, as val is. ``precision``: of the encoder (:func:`sslvit.eval.encode.encode`).
    """
    check_probe_settings(epochs, batch_size)
    base_lrs = base_lrs or DEFAULT_BASE_LRS.get(optimizer, ())
    start = time.perf_counter()
    transform = probe_transform(datamodule.image_size, datamodule.mean, datamodule.std, crop_scale)
    dataset = datamodule.build_dataset("train", transform)
    pool = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    targets = torch.tensor(dataset_targets(dataset))[pool]
    num_classes = num_classes_of(val.labels, targets)
    epochs_done = [0]

    def train_heads(positions, test, lrs):
        chosen = pool if positions is None else [pool[p] for p in positions]
        loader = DataLoader(
            Subset(dataset, chosen), batch_size=batch_size, shuffle=True, num_workers=datamodule.num_workers,
            generator=torch.Generator().manual_seed(seed), persistent_workers=datamodule.num_workers > 0,
            pin_memory=torch.device(device).type == "cuda",
        )  # fmt: skip
        trainer = ProbeTrainer(
            feature_dim(backbone, pooling), num_classes, lrs, batch_size, epochs * len(loader),
            int(round(warmup_epochs * len(loader))), optimizer, momentum, device, seed,
        )  # fmt: skip
        for _ in range(epochs):
            for images, labels in loader:
                if len(labels) > 1:
                    trainer.train_step(
                        encode(backbone, images.to(device, non_blocking=True), pooling, precision), labels
                    )
            if progress is not None:
                progress(epochs_done[0], time.perf_counter() - start)
            epochs_done[0] += 1
        return trainer.evaluate(test)

    def held_features(positions: Sequence[int]) -> Features:
        held = [pool[p] for p in positions]
        return dataset_features(
            backbone, datamodule, "train", pooling, batch_size, device, indices=held, precision=precision
        )

    result = choose_and_report(
        train_heads, held_features=held_features, train_labels=targets, val=val, base_lrs=base_lrs,
        selection=selection, held_out_fraction=held_out_fraction, seed=seed,
    )  # fmt: skip
    result.settings = dict(
        path="protocol", optimizer=optimizer, epochs=epochs, batch_size=batch_size, warmup_epochs=warmup_epochs,
        momentum=momentum, base_lrs=list(base_lrs), crop_scale=list(crop_scale), num_train=len(pool),
        num_val=len(val), feature_dim=val.dim,
    )  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result
