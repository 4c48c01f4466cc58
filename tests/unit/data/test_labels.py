"""Labels are matched by class name across splits, hidden folders are not classes, and every image mode
becomes 8-bit RGB by its real value range (or is refused naming the file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from sslvit.data import SSLDataModule
from sslvit.data.datasets import load_rgb
from sslvit.data.decode import DecodeAndCrop, EncodedImage
from sslvit.data.labels import LabelWarning
from sslvit.data.shards import shard_image_folder
from sslvit.errors import ConfigError, CorruptImageError


def class_folder(root: Path, split: str, name: str, value: int, count: int = 2) -> None:
    """``count`` 8x8 images of one grey ``value`` (the class is readable from the pixels)."""
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / f"{i}.png")


def labels_by_pixel(dm: SSLDataModule, split: str) -> dict[int, set[int]]:
    """Grey value of each image -> the labels it was given."""
    dataset = dm.build_dataset(split, None)
    found: dict[int, set[int]] = {}
    for i in range(len(dataset)):
        image, label = dataset[i]
        found.setdefault(int(np.asarray(image)[0, 0, 0]), set()).add(int(label))
    return found


def datamodule(root: Path, dataset: str = "imagefolder") -> SSLDataModule:
    return SSLDataModule(dataset=dataset, root=str(root), image_size=8, batch_size=2, num_workers=0)


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset"])
def test_val_lacking_a_train_class_keeps_every_label_on_its_class_name(tmp_path, kind):
    for name, value in (("cat", 10), ("dog", 20), ("zebra", 30)):
        class_folder(tmp_path / "images", "train", name, value)
    for name, value in (("cat", 10), ("zebra", 30)):  # no dog: zebra would become label 1 by position
        class_folder(tmp_path / "images", "val", name, value)
    root = tmp_path / "images"
    if kind == "webdataset":
        shard_image_folder(root, tmp_path / "shards")
        root = tmp_path / "shards"
    dm = datamodule(root, kind)
    with pytest.warns(LabelWarning, match="no images of 1 of the train split's 3 classes \\('dog'\\)"):
        val = labels_by_pixel(dm, "val")
    assert val == {10: {0}, 30: {2}}
    assert labels_by_pixel(dm, "train") == {10: {0}, 20: {1}, 30: {2}}
    assert dm.build_dataset("val", None).missing_classes == ["dog"]


def test_a_val_class_that_train_lacks_is_refused_naming_it(tmp_path):
    for split, names in (("train", ("a_dog", "b_cat", "c_airplane")), ("val", ("airplane", "cat", "dog"))):
        for value, name in enumerate(names):
            class_folder(tmp_path, split, name, 10 * value)
    with pytest.raises(ConfigError, match="has 3 class\\(es\\) that the train split lacks: 'airplane', 'cat', 'dog'"):
        datamodule(tmp_path).build_dataset("val", None)


def test_shards_with_their_own_class_order_are_relabelled_by_name(tmp_path):
    """Shards record each split's classes; a val index listing them in another order still maps by name."""
    import json

    for name, value in (("cat", 10), ("dog", 20)):
        class_folder(tmp_path / "images", "train", name, value)
        class_folder(tmp_path / "images", "val", name, value)
    shard_image_folder(tmp_path / "images", tmp_path / "shards")
    index_path = tmp_path / "shards" / "val" / "index.json"
    index = json.loads(index_path.read_text())
    index["sslvit"]["classes"] = ["dog", "cat"]  # the same images, classes listed the other way round
    index["sslvit"]["labels"] = [1 - label for label in index["sslvit"]["labels"]]
    index_path.write_text(json.dumps(index))
    assert labels_by_pixel(datamodule(tmp_path / "shards", "webdataset"), "val") == {10: {0}, 20: {1}}


def test_hidden_folders_and_files_are_not_data(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=3, per_class=4)
    for split in ("train", "val"):
        shutil.copytree(root / split / "class0", root / split / ".thumbnails")  # a hidden folder, as a class
        shutil.copytree(root / split / "class0", root / split / "class1" / ".cache")  # hidden inside a class
        (root / split / "class2" / "._0.png").write_bytes(b"AppleDouble metadata, not an image")
    dm = datamodule(root)
    train = dm.build_dataset("train", None)
    assert train.classes == ["class0", "class1", "class2"]
    assert len(train) == 12 and not any(
        "." in Path(p).parent.name or Path(p).name.startswith(".") for p, _ in train.samples
    )


# ---- image modes ----------------------------------------------------------------------------------
def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


@pytest.mark.parametrize(
    "name,array,expected",
    [
        ("gray16.png", np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16), [[0, 100], [255, 3]]),
        ("int32.tif", np.array([[0, 100], [255, 3]], np.int32), [[0, 100], [255, 3]]),
        ("int32-16bit.tif", np.array([[0, 257 * 100], [65535, 257 * 3]], np.int32), [[0, 100], [255, 3]]),
        ("unit-float.tif", np.array([[0.0, 100 / 255], [1.0, 3 / 255]], np.float32), [[0, 100], [255, 3]]),
        ("byte-float.tif", np.array([[0.0, 100.0], [255.0, 3.0]], np.float32), [[0, 100], [255, 3]]),
        ("gray8.png", np.array([[0, 100], [255, 3]], np.uint8), [[0, 100], [255, 3]]),
    ],
)
def test_every_image_mode_maps_to_8_bit_rgb_by_its_value_range(tmp_path, name, array, expected):
    path = save(tmp_path / name, array)
    rgb = np.asarray(load_rgb(str(path)))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    # The fast decode path of the training transform maps the same way (here the whole image, unflipped).
    crop = DecodeAndCrop(2, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)(EncodedImage(path.read_bytes(), name))
    np.testing.assert_array_equal(crop[0].numpy(), expected)


@pytest.mark.parametrize(
    "name,array", [("negative.tif", np.array([[-5, 0]], np.int32)), ("big.tif", np.array([[0, 3.5]], np.float32) * 1e3)]
)
def test_an_image_without_an_8_bit_meaning_is_refused_naming_the_file(tmp_path, name, array):
    path = save(tmp_path / name, array)
    with pytest.raises(CorruptImageError, match=f"cannot read image {path}: its [IF] pixels span"):
        load_rgb(str(path))
    with pytest.raises(CorruptImageError, match=f"cannot read image {name}: its [IF] pixels span"):
        DecodeAndCrop(2)(EncodedImage(path.read_bytes(), name))


def test_a_16_bit_folder_trains_on_its_pixels_not_on_white(tmp_path):
    """The data module's training and evaluation images of 16-bit PNGs keep their content."""
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            save(folder / "0.png", np.full((8, 8), 257 * (60 + 100 * c), np.uint16))
    dm = SSLDataModule(
        dataset="imagefolder",
        root=str(tmp_path),
        image_size=8,
        batch_size=2,
        num_workers=0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    images, labels = next(iter(dm.eval_dataloader("val")))
    assert torch.allclose(images[:, 0, 0, 0], torch.tensor([60.0, 160.0]) / 255, atol=1e-6), images[:, 0, 0, 0]
