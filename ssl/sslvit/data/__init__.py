"""Data: one LightningDataModule for every method, keyed resumable loaders, device-side augmentation."""

from sslvit.data.datamodule import DATASETS, SSLDataModule
from sslvit.data.datasets import SPLITS, DigitsDataset, class_balanced_subset, load_rgb
from sslvit.data.supervised import SupervisedAugment

__all__ = [
    "DATASETS",
    "SPLITS",
    "DigitsDataset",
    "SSLDataModule",
    "SupervisedAugment",
    "class_balanced_subset",
    "load_rgb",
]
