"""A folder of images without class folders pretrains; evaluation asks for labels in one line."""

from __future__ import annotations

import pytest
from PIL import Image

from sslvit.data import SSLDataModule
from sslvit.data.folders import UnlabelledImages, split_folder
from sslvit.errors import ConfigError


def write_flat(folder, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (20, 18), (i * 9 % 255, 40, 90)).save(folder / f"img{i:02d}.jpg")


def datamodule(root) -> SSLDataModule:
    return SSLDataModule(dataset="imagefolder", root=str(root), image_size=16, batch_size=4, num_workers=0)


def test_flat_folder_pretrains_without_validation_and_evaluation_needs_labels(tmp_path):
    write_flat(tmp_path / "flat", 10)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    dm = datamodule(tmp_path / "flat")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(dm._datasets["pretrain"], UnlabelledImages) and len(dm._datasets["pretrain"]) == 10
    assert batch["images"].shape == (4, 3, 16, 16) and batch["labels"].tolist() == [-1] * 4
    assert dm.val_dataloader() == [], "no val/: pretraining runs without validation"
    for split in ("train", "val"):
        with pytest.raises((ConfigError, FileNotFoundError), match="unlabelled|no val/"):
            dm.eval_dataloader(split)
    with pytest.raises(ConfigError, match=r"without class folders \(unlabelled\).*needs labels"):
        dm.build_dataset("train", None)


def test_train_and_val_folders_of_flat_images(tmp_path):
    write_flat(tmp_path / "root" / "train", 8)
    write_flat(tmp_path / "root" / "val", 4)
    dm = datamodule(tmp_path / "root")
    assert len(next(iter(dm.val_dataloader()))["images"]) == 4  # the validation loss is computed on val/
    assert split_folder(tmp_path / "root", "pretrain") == tmp_path / "root" / "train"
    with pytest.raises(ConfigError, match="needs labels"):
        dm.eval_dataloader("val")


def test_class_folders_are_still_an_imagefolder(image_folder):
    dm = datamodule(image_folder)
    assert dm.build_dataset("train", None).classes == ["class0", "class1", "class2"]
    assert len(dm.eval_dataloader("val").dataset) == 12
