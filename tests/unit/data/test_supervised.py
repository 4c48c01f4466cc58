"""The labelled training split with timm's fine-tuning augmentations, each image's randomness from its key."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.data import SSLDataModule, SupervisedAugment
from sslvit.data.sampling import KeyedDataset
from sslvit.data.supervised import posterize
from sslvit.errors import ConfigError


def test_training_reads_the_labelled_train_split_with_timms_transform():
    dm = SSLDataModule(dataset="digits", image_size=16, batch_size=8, num_workers=0, supervised=SupervisedAugment())
    transform = repr(dm.train_transform())
    assert "RandAugment(n=2" in transform and "RandomErasing(p=0.25, mode=pixel" in transform
    assert "scale=(0.08, 1.0)" in transform and "bicubic" in transform
    dm.setup("fit")
    assert dm.fit_split == "train" and "pretrain" not in dm._datasets
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 16, 16) and batch["labels"].shape == (8,)
    assert dm.hparams["supervised"] == SupervisedAugment().to_dict(), "stored as a plain dict (weights_only)"
    assert repr(dm.eval_transform()) == repr(SSLDataModule(dataset="digits", image_size=16).eval_transform())


def test_every_augmentation_follows_the_samples_key_only():
    # RandAugment draws from Python's random and NumPy, crops from Python's random, erasing from torch
    dm = SSLDataModule(dataset="digits", image_size=16, supervised=SupervisedAugment(re_prob=0.5))
    dataset = KeyedDataset(dm.build_dataset("train", dm.train_transform()))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = [dataset[(3, key)][0] for key in range(20)]
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    again = [dataset[(3, key)][0] for key in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), "same key, same image"
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2]), "the caller's generators are untouched"
    assert len({tuple(image.flatten().tolist()) for image in first}) == 20, "other keys, other augmentations"


def test_bad_supervised_settings_and_on_device_are_config_errors():
    with pytest.raises(ConfigError, match="data.supervised.auto_augment"):
        SupervisedAugment(auto_augment="autoaugment-m9")
    with pytest.raises(ConfigError, match="data.supervised.re_prob"):
        SupervisedAugment(re_prob=1.5)
    with pytest.raises(ConfigError, match="data.on_device supports crops and flips only"):
        SSLDataModule(on_device=True, supervised=SupervisedAugment())


def test_posterize_to_zero_bits_is_black_as_older_pillow_made_it():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.asarray(posterize(image, 0)).max() == 0
    assert np.array_equal(np.asarray(posterize(image, 8)), np.asarray(image))
    assert set(np.unique(np.asarray(posterize(image, 1)))) <= {0, 128}
    # the RandAugment of the fine-tuning recipe reaches 0 bits; it must not stop training
    transform = SupervisedAugment(auto_augment="rand-m10-n15-inc1", crop_scale=(1.0, 1.0)).transform(
        8, (0.5,) * 3, (0.5,) * 3
    )
    for _ in range(20):
        transform(image)
