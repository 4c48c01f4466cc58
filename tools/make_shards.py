"""Write WebDataset tar shards from an image folder, for `--data.dataset webdataset` and `--dataset webdataset`.

    python tools/make_shards.py --data-root /path/to/imagenet --output /path/to/imagenet-shards

DATA_ROOT holds train/ and val/ with one sub-folder per class (labels are kept), or image files
directly (unlabelled, pretraining only). OUTPUT gets train/shard-000000.tar ... and train/index.json
(and the same for val/). Image files are stored as they are, not re-encoded; training samples are
shuffled once (--seed) so that each shard holds a random sample of the classes. An OUTPUT that holds
files is refused; --overwrite replaces an earlier shard set whole, once the new one is complete.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from sslvit.cli.parser import ToolParser, positive_int
from sslvit.cli.tool_flags import add_overwrite_arg
from sslvit.data.shards import shard_image_folder
from sslvit.errors import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--data-root", required=True, help="an ImageFolder with train/ and val/, or a folder of images")
    parser.add_argument("--output", required=True, help="folder to write train/ and val/ shards into")
    parser.add_argument(
        "--samples-per-shard", type=positive_int, default=1000, help="about 110 MB of ImageNet JPEGs (1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffles the training samples once before writing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_arg(parser, "shard set")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = None if args.no_progress else (lambda items, **kw: tqdm(items, unit="img", **kw))
    with one_line_errors(parser.prog):
        written = shard_image_folder(
            args.data_root, args.output, args.samples_per_shard, args.seed, progress, overwrite=args.overwrite
        )
    for split, index in written.items():
        count = sum(shard["nsamples"] for shard in index["shardlist"])
        size = sum(shard["filesize"] for shard in index["shardlist"]) / 1e6
        labels = f"{len(index['sslvit']['classes'])} classes" if index["sslvit"]["labels"] else "unlabelled"
        print(
            f"{split}: {count} samples ({labels}) in {len(index['shardlist'])} shards, {size:.1f} MB -> "
            f"{args.output}/{split}/index.json"
        )


if __name__ == "__main__":
    main()
