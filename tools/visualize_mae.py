"""MAE reconstructions of a checkpoint as a PNG grid: original | masked | reconstruction | visible pasted back.

    python tools/visualize_mae.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 \
        --num-images 8 --output recon.png

The checkpoint is an sslvit MAE run or an official facebookresearch/mae .pth with its decoder.
Images are spread evenly over the split (evaluation transform); the masks depend only on --seed.
"""

from __future__ import annotations

import argparse

from sslvit.cli.parser import ToolParser, positive_int
from sslvit.cli.tool_flags import add_checkpoint_args, add_data_args
from sslvit.cli.tool_inputs import datamodule_from_args
from sslvit.errors import one_line_errors
from sslvit.viz.figure import evenly_spaced_images, save_png
from sslvit.viz.reconstruction import PATCH_STATS, load_mae, reconstruct, reconstruction_figure


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_checkpoint_args(parser, random_init=False, outside=False)
    add_data_args(parser)
    parser.add_argument("--split", choices=["train", "val"], default="val")
    parser.add_argument("--num-images", type=positive_int, default=8, help="rows of the grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks: the same seed, the same masks")
    parser.add_argument("--mask-ratio", type=float, help="fraction of patches to hide (default: the model's)")
    parser.add_argument(
        "--stats",
        choices=PATCH_STATS,
        default="patch",
        help="with norm_pix_loss, un-normalize predictions with each original patch's mean/variance (patch, the "
        "official demo) or with statistics of the visible patches only (visible)",
    )
    parser.add_argument(
        "--decoder-num-heads",
        type=int,
        help="official MAE .pth only: attention heads of its decoder (default: one per 32 channels, 16 for 512)",
    )
    parser.add_argument(
        "--norm-pix-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="official MAE .pth only: the weights predict per-patch normalized pixels (the released pretraining "
        "weights do; the demo's visualize weights do not: --no-norm-pix-loss)",
    )
    parser.add_argument("--panel-size", type=int, default=128, help="side of one panel in pixels")
    parser.add_argument("--output", default="recon.png", help="PNG file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        model, info = load_mae(args.checkpoint, args.decoder_num_heads, args.norm_pix_loss)
        data = datamodule_from_args(args, info)
        images = evenly_spaced_images(data.build_dataset(args.split, data.eval_transform()), args.num_images)
        result = reconstruct(model, images, data.mean, data.std, args.seed, args.mask_ratio, args.stats)
        path = save_png(reconstruction_figure(result, args.panel_size), args.output)
    print(f"wrote {path}: {len(images)} images, loss on hidden patches {result.loss:.4f}")


if __name__ == "__main__":
    main()
