"""Batched, keyed RandomResizedCrop + flip for device-resident datasets (`data.on_device`)."""

import subprocess
import sys

import torch
from torchvision.transforms import RandomResizedCrop

from sslvit.data import SSLDataModule
from sslvit.data.device_augment import crop_boxes, crop_resize_flip


def test_boxes_follow_torchvision_random_resized_crop():
    keys = torch.arange(4000)
    boxes, flip = crop_boxes(keys, 32, 32, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.18 and area.max() <= 1.0  # rounding to whole pixels aside
    assert ((w / h) >= 0.70).all() and ((w / h) <= 1.42).all()
    assert abs(flip.float().mean().item() - 0.5) < 0.03
    # the same distribution as torchvision's sampler (mean area and mean log aspect)
    torch.manual_seed(0)
    tv = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in keys])
    tv_area = (tv[:, 2] * tv[:, 3]).float() / 1024
    assert abs(area.mean() - tv_area.mean()) < 0.02
    assert abs(torch.log(w / h).mean() - torch.log(tv[:, 3] / tv[:, 2]).float().mean()) < 0.02
    # deterministic per key, whatever the batch
    again, _ = crop_boxes(torch.tensor([17, 3]), 32, 32)
    assert torch.equal(again[0], boxes[17]) and torch.equal(again[1], boxes[3])


def test_fallback_is_a_centre_crop_with_clamped_ratio():
    # a 10:1 image cannot hold any box with aspect in [3/4, 4/3] at 90% of its area: every try fails
    boxes, _ = crop_boxes(torch.arange(20), 4, 40, scale=(0.9, 1.0))
    assert torch.equal(boxes, torch.tensor([[0.0, 17.0, 4.0, 5.0]]).expand(20, 4)), boxes[0]


def test_crop_resize_flip_is_exact_on_identity_boxes():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(3, 4)
    flips = torch.tensor([False, True, False])
    out = crop_resize_flip(images, full, flips, size=8)
    expected = images.float() / 255
    expected[1] = expected[1].flip(-1)
    assert torch.allclose(out, expected, atol=1e-5)
    quadrant = torch.tensor([[4.0, 0.0, 4.0, 4.0]]).expand(3, 4)  # bottom-left 4x4 at 4x4: no resampling
    out = crop_resize_flip(images, quadrant, torch.zeros(3, dtype=torch.bool), size=4)
    assert torch.allclose(out, images[:, :, 4:, :4].float() / 255, atol=1e-5)


def test_data_module_on_device_batches(image_folder):
    dm = SSLDataModule(
        dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0, on_device=True
    )
    dm.setup("fit")
    assert dm._resident.dtype == torch.uint8 and dm._resident.shape == (24, 3, 16, 16)
    batch = next(iter(dm.train_dataloader()))
    images = dm.augment_on_device(batch["images"], batch["keys"])  # the loader yields indices
    assert images.shape == (8, 3, 16, 16) and torch.isfinite(images).all()
    again = dm.augment_on_device(batch["images"], batch["keys"])
    assert torch.equal(images, again)
    # the normalized pixels come from the stored images: undo normalization and compare ranges
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    pixels = images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_fit_with_device_resident_data(tmp_path):
    from conftest import REPO
    from sslvit.cli import run_cli

    config = str(REPO / "tests" / "configs" / "mae_tiny.yaml")
    args = ["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path), "--data.on_device", "true"]
    cli = run_cli([*args, "--trainer.max_steps", "2"])
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_decoding_a_large_dataset_with_workers_does_not_run_out_of_file_descriptors(tmp_path):
    """Regression: every image crossed from the workers as its own shared tensor, each holding a file
    descriptor, and 45,000 CIFAR-10 images ended in "received 0 items of ancdata" (here, with 512
    descriptors for 3,000 images, in a hang). Now one tensor per batch crosses."""
    script = tmp_path / "decode.py"
    script.write_text(
        "import resource, torch\n"
        "from torch.utils.data import Dataset\n"
        "from sslvit.data.device_augment import decode_all\n"
        "class Tiny(Dataset):\n"
        "    def __len__(self): return 3000\n"
        "    def __getitem__(self, i): return torch.full((3, 4, 4), i % 256, dtype=torch.uint8), i\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))\n"
        "images = decode_all(Tiny(), num_workers=1)\n"
        "print(tuple(images.shape), [int(images[i, 0, 0, 0]) for i in (0, 1000, 2999)])\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(3000, 3, 4, 4) [0, 232, 183]", "every image, in order"


def test_decoding_images_of_several_sizes_is_one_clear_error():
    import pytest

    from sslvit.data.device_augment import decode_all
    from sslvit.errors import ConfigError

    images = [(torch.zeros(3, 4, 4, dtype=torch.uint8), 0), (torch.zeros(3, 6, 6, dtype=torch.uint8), 1)]
    with pytest.raises(ConfigError, match="data.on_device needs images of one size, found 2 sizes"):
        decode_all(images)
    assert decode_all(images[:1] * 3).shape == (3, 3, 4, 4)
