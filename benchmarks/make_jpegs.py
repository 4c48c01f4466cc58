"""ImageNet-like JPEGs for the loader benchmark, made from any images (e.g. CIFAR-10).

    python benchmarks/make_jpegs.py --source ../shared/data/cifar10/train --output runs/imagenet-like --count 2000

Each output image is 500x375 (ImageNet's most common size; --size to change it), a mosaic of 16x12 source images with a
little noise, saved at JPEG quality 95: about as many bytes per image as ImageNet's photos
(~110 KB), so entropy decoding costs about what it costs there. The output is an ImageFolder with
train/<class>/ and val/<class>/ (90% / 10%), readable by tools/make_shards.py too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sslvit.cli.parser import ToolParser

TILES = (16, 12)


def source_images(folder: Path, limit: int = 5000) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    if not found:
        raise SystemExit(f"make_jpegs.py: error: no .jpg or .png images under {folder}")
    return found


def mosaic(sources: list[Path], rng: np.random.Generator, noise: float, size: tuple[int, int]) -> Image.Image:
    """RGB of ``size`` (width, height) from 16x12 randomly chosen source images (resized to tiles) plus noise."""
    width, height = size
    tile_w, tile_h = -(-width // TILES[0]), -(-height // TILES[1])
    canvas = Image.new("RGB", (width, height))
    for i in range(TILES[0]):
        for j in range(TILES[1]):
            tile = (
                Image.open(sources[rng.integers(len(sources))]).convert("RGB").resize((tile_w, tile_h), Image.BICUBIC)
            )
            canvas.paste(tile, (i * tile_w, j * tile_h))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, noise, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--source", required=True, help="a folder with any .jpg/.png images (searched recursively)")
    parser.add_argument("--output", required=True, help="the ImageFolder to write (train/ and val/)")
    parser.add_argument("--count", type=int, default=2000, help="images to write in all")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of every image (ImageNet's most common size)")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--noise", type=float, default=6.0, help="std of the added noise, in pixel levels")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sources, rng = source_images(Path(args.source)), np.random.default_rng(args.seed)
    size = tuple(int(side) for side in args.size.split("x"))
    total = 0
    for i in tqdm(range(args.count), unit="img"):
        split = "val" if (i // args.classes) % 10 == 9 else "train"
        folder = Path(args.output) / split / f"class{i % args.classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:07d}.jpg"
        mosaic(sources, rng, args.noise, size).save(path, quality=args.quality)
        total += path.stat().st_size
    print(f"wrote {args.count} JPEGs of {args.size}, {total / args.count / 1e3:.0f} KB on average, to {args.output}")


if __name__ == "__main__":
    main()
