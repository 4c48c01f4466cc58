"""Feature maps of any checkpoint's encoder as a PNG grid: PCA of patch tokens as RGB, CLS attention per head.

    python tools/visualize_features.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 \
        --output features.png

Add --random-init to draw the same figure for an untrained encoder of the same architecture.
"""

from __future__ import annotations

import argparse

from sslvit.cli.parser import ToolParser, positive_int
from sslvit.cli.tool_flags import add_checkpoint_args, add_data_args
from sslvit.cli.tool_inputs import backbone_from_args, datamodule_from_args
from sslvit.errors import one_line_errors
from sslvit.viz.features import features_figure
from sslvit.viz.figure import evenly_spaced_images, save_png


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_checkpoint_args(parser)
    add_data_args(parser)
    parser.add_argument("--split", choices=["train", "val"], default="val")
    parser.add_argument(
        "--num-images", type=positive_int, default=8, help="rows of the grid; the PCA is fitted over them"
    )
    parser.add_argument("--max-heads", type=int, help="show at most this many per-head attention maps")
    parser.add_argument("--panel-size", type=int, default=96, help="side of one panel in pixels")
    parser.add_argument("--output", default="features.png", help="PNG file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        backbone, info = backbone_from_args(args)
        data = datamodule_from_args(args, info)
        images = evenly_spaced_images(data.build_dataset(args.split, data.eval_transform()), args.num_images)
        fig = features_figure(backbone, images, data.mean, data.std, args.panel_size, args.max_heads)
        path = save_png(fig, args.output)
    print(f"wrote {path}: {len(images)} images at {images.shape[-1]}px")


if __name__ == "__main__":
    main()
