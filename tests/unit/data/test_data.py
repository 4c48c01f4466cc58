import urllib.error

import pytest
import torch
from PIL import Image

from sslvit.data import DigitsDataset, SSLDataModule, class_balanced_subset
from sslvit.errors import CorruptImageError, DatasetUnavailableError


def test_digits_offline_dataset():
    train, val = DigitsDataset("pretrain"), DigitsDataset("val")
    assert (len(train), len(val)) == (1497, 300)
    image, label = train[0]
    assert image.size == (32, 32) and image.mode == "RGB" and 0 <= label <= 9
    assert sorted(set(val.targets)) == list(range(10))
    # the digit is drawn: centre brighter than the border on average
    assert sum(train.images[i].getpixel((16, 16)) for i in range(50)) > sum(
        train.images[i].getpixel((0, 0)) for i in range(50)
    )


def test_train_and_eval_transforms():
    dm = SSLDataModule(dataset="digits", image_size=16, batch_size=8, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 16, 16) and batch["labels"].shape == (8,)
    assert batch["keys"].dtype == torch.int64 and len(set(batch["keys"].tolist())) == 8
    evaluation = dm.eval_dataloader("val", batch_size=300)
    a, b = next(iter(evaluation))[0], next(iter(evaluation))[0]
    assert torch.equal(a, b), "the eval transform must be deterministic"
    # normalized with ImageNet statistics: black pixels map to -mean/std
    assert a.min().item() == pytest.approx(-0.485 / 0.229, abs=0.05)


def test_unknown_dataset_and_bad_values():
    with pytest.raises(ValueError, match="data.dataset='imagenet21k' is unknown"):
        SSLDataModule(dataset="imagenet21k")
    with pytest.raises(ValueError, match="crop_scale"):
        SSLDataModule(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="batch_size"):
        SSLDataModule(batch_size=0)


def test_no_io_in_init_and_missing_imagefolder(tmp_path):
    dm = SSLDataModule(dataset="imagefolder", root=str(tmp_path / "nowhere"))  # must not touch the disk
    with pytest.raises(DatasetUnavailableError, match="nowhere/train does not exist"):
        dm.setup("fit")


def test_missing_cifar_offline_is_a_clear_error(tmp_path):
    dm = SSLDataModule(dataset="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DatasetUnavailableError) as err:
        dm.prepare_data()
    assert "cifar-10-batches-py" in str(err.value) and str(tmp_path) in str(err.value)
    assert "download is off" in str(err.value)


def test_failed_download_has_no_network_traceback(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    dm = SSLDataModule(dataset="cifar100", root=str(tmp_path), download=True)
    with pytest.raises(DatasetUnavailableError) as err:
        dm.prepare_data()
    assert "could not be downloaded" in str(err.value) and "name resolution" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_imagefolder_and_corrupt_image(image_folder):
    dm = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm._datasets["pretrain"]) == 24 and len(dm._datasets["val"]) == 12
    bad = image_folder / "train" / "class1" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated file
    dm = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=24, num_workers=0)
    dm.setup("fit")
    with pytest.raises(CorruptImageError, match="class1/3.png"):
        next(iter(dm.train_dataloader()))
    skipping = SSLDataModule(
        dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=24, num_workers=0, skip_corrupt=True
    )
    skipping.setup("fit")
    with pytest.warns(UserWarning, match="3.png"):
        batch = next(iter(skipping.train_dataloader()))
    assert batch["images"].shape[0] == 23 and batch["skipped"].item() == 1


def test_class_balanced_subset():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    idx = class_balanced_subset(targets, 30, seed=1)
    assert len(idx) == 30 and [sum(targets[i] == c for i in idx) for c in range(3)] == [10, 10, 10]
    assert idx == class_balanced_subset(targets, 30, seed=1)
    with pytest.raises(ValueError, match="larger"):
        class_balanced_subset(targets, 500)


def test_train_subset(image_folder):
    dm = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, train_subset=6, num_workers=0)
    dm.setup("fit")
    assert len(dm._datasets["pretrain"]) == 6


def test_png_images_are_rgb(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (16, 16), 128).save(folder / "grey.png")
    (tmp_path / "val").mkdir()
    dm = SSLDataModule(dataset="imagefolder", root=str(tmp_path), image_size=16, num_workers=0)
    assert dm.build_dataset("train", dm.eval_transform())[0][0].shape == (3, 16, 16)
