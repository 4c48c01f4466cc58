"""One LightningDataModule for every method: datasets, transforms, loaders.

Splits: ``pretrain`` is what self-supervised training reads (for STL-10 the labelled train split
plus the 100k unlabelled images), ``train`` and ``val`` are the labelled splits that evaluators
(kNN, linear probe) use; with ``supervised`` set, training reads ``train`` with timm's augmentations
(fine-tuning). Training and validation batches are dicts (``images``, ``labels``,
per-sample ``keys``; see :mod:`sslvit.data.sampling`); evaluation loaders give ``(images, labels)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.datasets import SPLITS, DigitsDataset, ImageFolder, Split, class_balanced_subset, load_rgb
from sslvit.data.decode import DecodeAndCrop, normalize_on_device, read_encoded
from sslvit.data.device_augment import ResidentIndices, augment_batch, decode_all
from sslvit.data.folders import UnlabelledImages, is_unlabelled, split_folder, unlabelled_message
from sslvit.data.labels import align_labels, class_names
from sslvit.data.sampling import CollateKeyed, KeyedDataset, KeyedSampler, ResumableLoader
from sslvit.data.shards import INDEX, ShardDataset, ShardSampler, shard_groups
from sslvit.data.supervised import SupervisedAugment
from sslvit.errors import ConfigError, DatasetUnavailableError

DATASETS = ("digits", "cifar10", "cifar100", "stl10", "imagefolder", "webdataset")
DatasetName = Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder", "webdataset"]
FILE_DATASETS = ("imagefolder", "webdataset")  # encoded images on disk: the fast decode path applies
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


# ---- the data module ----------------------------------------------------------------------------
class SSLDataModule(L.LightningDataModule):
    """Images for self-supervised pretraining and for evaluation.

    Args:
        dataset: ``digits`` (offline, ships with scikit-learn), ``cifar10``, ``cifar100``,
            ``stl10`` (torchvision, downloaded into ``root`` when possible), ``imagefolder``
            (``root/train/<class>/*`` and ``root/val/<class>/*``, or unlabelled image files directly in
            ``root`` for pretraining; :mod:`sslvit.data.folders`) or ``webdataset`` (tar shards written by
            ``tools/make_shards.py``: ``root/train/index.json``, ``root/val/index.json``; :mod:`sslvit.data.shards`).
        root: where the data lives (or is downloaded to).
        image_size: side of the training images; must equal the model's ``backbone.img_size``.
        batch_size: images per device per step.
        num_workers: loader processes per device.
        crop_scale, crop_ratio: RandomResizedCrop area and aspect ranges of the training transform
            (MAE: scale 0.2-1.0, bicubic).
        hflip: random horizontal flips in the training transform.
        color_jitter: strength of brightness/contrast/saturation jitter (0 disables it).
        eval_crop_fraction: evaluation transform resizes to ``image_size / eval_crop_fraction``
            then center-crops ``image_size`` (0.875 is the ImageNet 256 -> 224 convention).
        train_subset: train on a fixed class-balanced subset of this many images.
        skip_corrupt: skip unreadable images (counted, logged) instead of stopping with an error.
        on_device: keep the pretraining images as one uint8 tensor on the training device and
            crop/flip whole batches there (:mod:`sslvit.data.device_augment`): for datasets that fit in
            memory with images of one size (CIFAR, STL-10), so the loader is never the bottleneck.
        fast_decode: for ``imagefolder`` and ``webdataset`` without color jitter, the training
            transform decodes with ``torchvision.io.decode_jpeg`` (at a DCT scale when the crop allows
            it), crops and resizes uint8 tensors and hands them to the device, where they are normalized
            (:mod:`sslvit.data.decode`); false: the PIL transform of the MAE reference.
        download: let torchvision download cifar10/cifar100/stl10 when they are missing.
        seed: seed of the data order, of every sample's random key (its crops, mask, drop path) and of the
            ``train_subset`` draw; None (default): the run's ``seed_everything`` (0 without one), so runs
            with other seeds see other orders and augmentations, not only another initialisation.
        supervised: train on the labelled ``train`` split with these augmentations (fine-tuning:
            RandAugment, random erasing; :class:`~sslvit.data.supervised.SupervisedAugment`) instead
            of the ``pretrain`` split with the crop/flip/jitter settings above.
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        root: str = "data",
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 2,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        color_jitter: float = 0.0,
        eval_crop_fraction: float = 1.0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train_subset: int | None = None,
        skip_corrupt: bool = False,
        on_device: bool = False,
        fast_decode: bool = True,
        download: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int | None = None,
        supervised: SupervisedAugment | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is unknown; choose one of {list(DATASETS)}")
        if image_size <= 0 or batch_size <= 0 or num_workers < 0:
            raise ConfigError(
                f"data.image_size ({image_size}) and data.batch_size ({batch_size}) must be positive "
                f"and data.num_workers ({num_workers}) non-negative"
            )
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}")
        if not 0.0 < eval_crop_fraction <= 1.0:
            raise ConfigError(f"data.eval_crop_fraction must be in (0, 1], got {eval_crop_fraction}")
        if on_device and color_jitter > 0:
            raise ConfigError("data.on_device supports crops and flips only: set data.color_jitter: 0")
        if train_subset is not None and train_subset <= 0:
            raise ConfigError(f"data.train_subset must be positive or null, got {train_subset}")
        if on_device and supervised is not None:
            raise ConfigError(
                "data.on_device supports crops and flips only, not data.supervised: set data.on_device: false"
            )
        if seed is None:  # LightningCLI seeds everything before it builds the data module
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.save_hyperparameters()
        self.hparams["seed"] = seed
        # A plain dict in the checkpoint, so that it loads with torch.load(weights_only=True).
        self.supervised = SupervisedAugment.from_dict(supervised) if supervised is not None else None
        self.hparams["supervised"] = self.supervised.to_dict() if self.supervised is not None else None
        #: the split training reads
        self.fit_split: Split = "train" if self.supervised is not None else "pretrain"
        self.dataset_name, self.root, self.image_size = dataset, root, image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self._datasets: dict[str, Dataset] = {}

    # ---- transforms ----
    def train_transform(self) -> Callable:
        h = self.hparams
        if self.supervised is not None:
            return self.supervised.transform(self.image_size, self.mean, self.std)
        if h.fast_decode and self.dataset_name in FILE_DATASETS and h.color_jitter == 0 and not h.on_device:
            return DecodeAndCrop(self.image_size, scale=tuple(h.crop_scale), ratio=tuple(h.crop_ratio), hflip=h.hflip)
        steps: list[Callable] = [
            T.RandomResizedCrop(
                self.image_size,
                scale=tuple(h.crop_scale),
                ratio=tuple(h.crop_ratio),
                interpolation=T.InterpolationMode.BICUBIC,
            )
        ]
        if h.hflip:
            steps.append(T.RandomHorizontalFlip())
        if h.color_jitter > 0:
            steps.append(T.ColorJitter(h.color_jitter, h.color_jitter, h.color_jitter))
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def eval_transform(self) -> Callable:
        """Deterministic val-style transform: resize, center crop, normalize."""
        resize = int(round(self.image_size / self.hparams.eval_crop_fraction))
        return T.Compose(
            [
                T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    # ---- datasets ----
    def build_dataset(self, split: Split, transform: Callable | None, download: bool = False) -> Dataset:
        """The dataset of one split with a given transform (evaluators pass the eval transform).

        The labels of the labelled ``train`` and ``val`` splits index :meth:`class_names` (train's classes),
        matched by name (:func:`sslvit.data.labels.align_labels`): a val class that train lacks is an error.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        dataset = self._split_dataset(split, transform, download)
        if split in ("train", "val") and getattr(dataset, "labelled", True):
            classes = self.class_names()
            if classes is not None and (split == "val" or class_names(dataset) is not None):
                align_labels(dataset, classes, f"{split} split of {self._where(split)}")
            elif split == "val" and self._train_labelled:
                raise ConfigError(
                    f"the train split of {self._where('train')} has labels but records no class names, so the val "
                    "labels cannot be matched to them by name; rewrite it with its class names (tools/make_shards.py)"
                )
        return dataset

    def class_names(self) -> list[str] | None:
        """The train split's class names in label order: the label map of every labelled split (None: the train
        split is unlabelled, or records labels without names)."""
        if not hasattr(self, "_class_names"):
            try:
                train = self._split_dataset("train", None, download=False)
                self._train_labelled = getattr(train, "labelled", True)
            except ConfigError:  # a folder of unlabelled images: pretraining only, no label map
                train, self._train_labelled = None, False
            self._class_names = class_names(train) if self._train_labelled else None
        return self._class_names

    def _where(self, split: Split) -> str:
        if self.dataset_name == "imagefolder":
            return f"ImageFolder {split_folder(self.root, split)}"
        if self.dataset_name == "webdataset":
            return f"shards {Path(self.root) / ('val' if split == 'val' else 'train')}"
        return self.dataset_name

    def _split_dataset(self, split: Split, transform: Callable | None, download: bool = False) -> Dataset:
        name, root = self.dataset_name, self.root
        if name == "digits":
            return DigitsDataset(split, transform)
        if name == "webdataset":
            dataset = ShardDataset(Path(root) / ("val" if split == "val" else "train"), transform)
            if split == "train" and not dataset.labelled:
                raise ConfigError(unlabelled_message(dataset.root))
            return dataset
        if name == "imagefolder":
            folder = split_folder(root, split)
            if folder is None:
                raise DatasetUnavailableError(f"imagefolder dataset: {root} has no val/ folder")
            loader = read_encoded if getattr(transform, "wants_encoded", False) else load_rgb
            if is_unlabelled(folder):
                return UnlabelledImages(folder, transform, loader)
            try:  # sslvit's ImageFolder: refuses symlink loops, names empty class folders
                return ImageFolder(str(folder), transform=transform, loader=loader)
            except DatasetUnavailableError:
                raise
            except FileNotFoundError as err:  # torchvision: no class folder at all
                raise DatasetUnavailableError(f"imagefolder dataset: {err}") from None
        return self._torchvision_dataset(split, transform, download)

    def _torchvision_dataset(self, split: Split, transform: Callable | None, download: bool) -> Dataset:
        name, root = self.dataset_name, self.root
        try:
            if name == "stl10":
                stl_split = {"pretrain": "train+unlabeled", "train": "train", "val": "test"}[split]
                return tvd.STL10(root, split=stl_split, transform=transform, download=download)
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            return cls(root, train=split != "val", transform=transform, download=download)
        except Exception as err:  # torchvision raises RuntimeError when missing, URLError/OSError offline
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            expected = TORCHVISION_FOLDERS[name]
            how = "could not be downloaded" if download else "download is off (data.download: false)"
            raise DatasetUnavailableError(
                f"{name} was not found in {os.path.abspath(os.path.join(root, expected))} and {how} "
                f"({reason}). Put the extracted '{expected}' folder under data.root={root!r} (download it "
                "on a machine with internet access), or point --data.root at an ImageFolder with train/ "
                "and val/ and set --data.dataset imagefolder"
            ) from None

    def prepare_data(self) -> None:
        """Download torchvision datasets once (rank 0); other datasets need nothing."""
        if self.dataset_name in TORCHVISION_FOLDERS:
            for split in ("pretrain", "val"):
                self._torchvision_dataset(split, None, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.fit_split not in self._datasets:
            on_device = self.hparams.on_device
            train = self.build_dataset(self.fit_split, T.PILToTensor() if on_device else self.train_transform())
            targets = getattr(train, "targets", None) or getattr(train, "labels", None)
            if self.hparams.train_subset:
                chosen = class_balanced_subset(targets, self.hparams.train_subset, self.hparams.seed)
                train, targets = Subset(train, chosen), [targets[i] for i in chosen]
            if on_device:
                self._resident = decode_all(train, self.num_workers)
                train = ResidentIndices(targets)
            self._datasets[self.fit_split] = train
            if self.has_val_split():
                self._datasets["val"] = self.build_dataset("val", self.eval_transform())

    def has_val_split(self) -> bool:
        """False only for unlabelled images (a folder, or shards written from one) without val/: pretraining
        then runs without validation."""
        if self.dataset_name == "imagefolder":
            return split_folder(self.root, "val") is not None
        if self.dataset_name == "webdataset":
            return (Path(self.root) / "val" / INDEX).is_file() or ShardDataset(Path(self.root) / "train").labelled
        return True

    # ---- loaders ----
    def _keyed_loader(self, split: str, shuffle: bool, loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        resident = self.hparams.on_device and split == self.fit_split  # indices only: nothing random to seed
        dataset = KeyedDataset(self._datasets[split], skip_corrupt=self.hparams.skip_corrupt, random_items=not resident)
        order = dict(
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=self.hparams.seed,
            drop_last=shuffle,
            keys_vary_by_epoch=shuffle,
        )
        if isinstance(dataset.dataset, ShardDataset | Subset) and self.dataset_name == "webdataset":
            # each rank reads its own run of shards (ShardSampler); elsewhere a global permutation
            sampler = ShardSampler(dataset, self.batch_size, groups=shard_groups(dataset.dataset), **order)
        else:
            sampler = KeyedSampler(dataset, self.batch_size, **order)
        # Its own generator, so creating the loader's iterator never draws from the global RNG.
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=shuffle,
            generator=generator,
            collate_fn=CollateKeyed(count_skipped=self.hparams.skip_corrupt),
            # device-resident images: the loader only hands out indices, worker processes would only cost
            **self._worker_settings(0 if self.hparams.on_device and split == "pretrain" else None),
        )

    def _worker_settings(self, workers: int | None = None) -> dict[str, Any]:
        workers = self.num_workers if workers is None else workers
        return dict(
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.hparams.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Batches of the training split as dicts (``images``, ``labels``, ``keys``); resumable mid-epoch."""
        self.setup("fit")
        size = len(self._datasets[self.fit_split])
        if size < self.batch_size:
            raise ConfigError(
                f"the {self.fit_split} split has {size} images, fewer than data.batch_size={self.batch_size}; "
                "lower the batch size"
            )
        self._train_loader = self._keyed_loader(self.fit_split, shuffle=True, loader_class=ResumableLoader)
        if getattr(self, "_resume_position", None) is not None:
            self._train_loader.load_state_dict(self._resume_position)
        return self._train_loader

    def val_dataloader(self) -> DataLoader | list:
        """The val split in the same dict format, with keys fixed across epochs (same masks every time)."""
        self.setup("validate")
        return self._keyed_loader("val", shuffle=False) if "val" in self._datasets else []

    def eval_dataloader(self, split: Split, batch_size: int | None = None, require_labels: bool = True) -> DataLoader:
        """Deterministic loader of ``(images, labels)`` of a split with the eval transform. A split without
        labels is refused unless ``require_labels`` is False (label-free evaluations: its labels are -1)."""
        dataset = self.build_dataset(split, self.eval_transform())
        if require_labels and not getattr(dataset, "labelled", True):
            raise ConfigError(unlabelled_message(getattr(dataset, "root", self.root)))
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=False, **self._worker_settings())

    # ---- Lightning hooks ----
    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch. Lightning also keeps it in its loop state, but restores
        that only into a loader built after the restore; a run whose optimizer setup builds the loader
        first (``trainer.max_epochs``, ``warmup_epochs``) would replay its epoch from the start. The
        data module is restored before the optimizer setup, so its loader starts at the right batch."""
        loader = getattr(self, "_train_loader", None)
        return {"train_position": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_position = state.get("train_position")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the training batches the loop has actually consumed (not the ones prefetched), so a
        # checkpoint records exactly where in the epoch the run stands.
        trainer = self.trainer
        if trainer is not None and trainer.training and getattr(self, "_train_loader", None) is not None:
            self._train_loader.sampler.batches_done += 1
            if self.hparams.on_device:  # the loader delivered dataset indices; images are made on the device
                batch["indices"] = batch.pop("images")
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "indices" in batch:
            batch["images"] = self.augment_on_device(batch.pop("indices"), batch["keys"])
        if isinstance(batch, dict) and batch["images"].dtype == torch.uint8:  # DecodeAndCrop: normalized here
            batch["images"] = normalize_on_device(batch["images"], self.mean, self.std)
        return batch

    def augment_on_device(self, indices: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The training transform, batched on the device of ``indices``: -> normalized images [N, C, S, S]."""
        if self._resident.device != indices.device:
            self._resident = self._resident.to(indices.device)
        h = self.hparams
        return augment_batch(
            self._resident[indices],
            keys,
            self.image_size,
            tuple(h.crop_scale),
            tuple(h.crop_ratio),
            h.hflip,
            self.mean,
            self.std,
        )
