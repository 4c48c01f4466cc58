"""The 224 px training loader alone, in images/s per CPU core, beside the official MAE loader.

    python benchmarks/loader.py --data-root runs/imagenet-like --shards runs/imagenet-like-shards --output loader.json

DATA_ROOT is an ImageFolder of ImageNet-like JPEGs (benchmarks/make_jpegs.py makes one from any images);
--shards the same images written by tools/make_shards.py (optional). Every variant is a DataLoader in
this process with one thread, timed in CPU seconds (so images/s is per core, and other processes on a
busy machine change it little), giving batches of --batch-size training crops
(224 px, RandomResizedCrop scale 0.2-1, bicubic, flip): decode, crop, collate. The variants take turns,
one batch each, over the same images, so a busy machine slows all of them alike. Rows from the
reference down add sslvit's levers one at a time; the last two are measured alternatives.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, io
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F2

from sslvit.cli.parser import ToolParser
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.decode import DecodeAndCrop, read_encoded
from sslvit.data.shards import ShardDataset

SIZE, SCALE = 224, (0.2, 1.0)


def mae_reference(root: Path) -> Dataset:
    """facebookresearch/mae main_pretrain.py's training data: ImageFolder + PIL transforms, float out."""
    crop = T.RandomResizedCrop(SIZE, scale=SCALE, interpolation=T.InterpolationMode.BICUBIC)
    transform = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return datasets.ImageFolder(str(root / "train"), transform=transform)


def mae_uint8(root: Path) -> Dataset:
    """The reference's PIL decode, crop and resize, but uint8 out (normalized on the device)."""
    crop = T.RandomResizedCrop(SIZE, scale=SCALE, interpolation=T.InterpolationMode.BICUBIC)
    return datasets.ImageFolder(
        str(root / "train"), transform=T.Compose([crop, T.RandomHorizontalFlip(), T.PILToTensor()])
    )


def decode_and_crop(root: Path, draft: bool) -> Dataset:
    crop = DecodeAndCrop(SIZE, scale=SCALE, draft=draft)
    return datasets.ImageFolder(str(root / "train"), crop, loader=read_encoded)


class PILBoxCrop(Dataset):
    """PIL decode, then crop and resize in one ``resize(box=...)`` call and flip, uint8 out."""

    def __init__(self, root: Path) -> None:
        self.files = datasets.ImageFolder(str(root / "train")).samples

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.open(self.files[i][0]).convert("RGB")
        top, left, h, w = T.RandomResizedCrop.get_params(image, list(SCALE), [3 / 4, 4 / 3])
        out = image.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + w, top + h))
        out = out.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1) < 0.5 else out
        return F2.pil_to_tensor(out), self.files[i][1]


class FullDecode(Dataset):
    """decode_jpeg only, at full size: the CPU part of cropping on the device (device_augment), were
    the full images (of many sizes) shipped there."""

    def __init__(self, root: Path) -> None:
        self.files = datasets.ImageFolder(str(root / "train")).samples

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = io.decode_jpeg(io.read_file(self.files[i][0]), mode=io.ImageReadMode.RGB)
        return image[:, :SIZE, :SIZE], self.files[i][1]  # a corner, so the batch collates; decoding is what counts


def variants(args: argparse.Namespace) -> dict[str, Dataset]:
    root = Path(args.data_root)
    rows = {
        "facebookresearch/mae (ImageFolder + PIL, float)": mae_reference(root),
        "+ uint8 out, normalized on the device": mae_uint8(root),
        "+ decode_jpeg to a tensor, torch uint8 resize": decode_and_crop(root, draft=False),
        "+ DCT downscale of large crops: sslvit": decode_and_crop(root, draft=True),
    }
    if args.shards:
        rows["sslvit, from webdataset shards"] = ShardDataset(
            Path(args.shards) / "train", DecodeAndCrop(SIZE, scale=SCALE)
        )
    rows["PIL crop+resize in one call (resize box), uint8"] = PILBoxCrop(root)
    rows["decode_jpeg alone, full size (crops on the device)"] = FullDecode(root)
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = variants(args)
    loaders = {
        name: DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=0) for name, data in rows.items()
    }
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    seconds, images = dict.fromkeys(rows, 0.0), dict.fromkeys(rows, 0)
    for round_ in range(args.warmup + args.batches):
        for name in rows:  # round-robin: every variant decodes the same images in this round
            torch.manual_seed(round_)
            start = time.process_time()  # CPU seconds of this one-threaded process: per-core cost
            try:
                batch = next(iterators[name])
            except StopIteration:
                iterators[name] = iter(loaders[name])
                batch = next(iterators[name])
            if round_ >= args.warmup:
                seconds[name] += time.process_time() - start
                images[name] += len(batch[0])
    reference = next(iter(rows))
    result = {name: {"images_per_s_per_core": images[name] / seconds[name]} for name in rows}
    for name in rows:
        result[name]["vs_reference"] = (
            result[name]["images_per_s_per_core"] / result[reference]["images_per_s_per_core"]
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument(
        "--data-root", required=True, help="ImageFolder of JPEGs with train/ (benchmarks/make_jpegs.py)"
    )
    parser.add_argument("--shards", help="the same images as webdataset shards (tools/make_shards.py)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="measured batches per variant")
    parser.add_argument("--warmup", type=int, default=2, help="batches per variant before measuring")
    parser.add_argument(
        "--gpu-images-per-s",
        type=float,
        default=4455.0,
        help="images/s one GPU trains, for the cores-per-GPU column (ViT-B MAE, H100, compiled: results/speed.md)",
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # its name before --output everywhere
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = measure(args)
    print(f"{'variant':<52} {'img/s/core':>10} {'vs MAE':>7} {'cores/GPU':>9}")
    for name, row in result.items():
        rate = row["images_per_s_per_core"]
        row["cores_per_gpu"] = args.gpu_images_per_s / rate
        print(f"{name:<52} {rate:>10.1f} {row['vs_reference']:>6.2f}x {row['cores_per_gpu']:>9.1f}")
    record = {
        "batch_size": args.batch_size,
        "batches": args.batches,
        "gpu_images_per_s": args.gpu_images_per_s,
        "rows": result,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
