"""Data: one LightningDataModule for every method, keyed resumable loaders, device-side augmentation."""

from sslvit.data.datamodule import DATASETS, SSLDataModule
from sslvit.data.datasets import SPLITS, DigitsDataset, class_balanced_subset, load_rgb

__all__ = ["DATASETS", "SPLITS", "DigitsDataset", "SSLDataModule", "class_balanced_subset", "load_rgb"]
