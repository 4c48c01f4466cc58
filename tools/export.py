"""Export the encoder of an MAE, BEiT or CPC checkpoint for timm (decoder and heads are left out).

    python tools/export.py --checkpoint runs/.../last.ckpt --output exported/

Writes exported/model.safetensors (timm key names) and exported/config.json (timm's hub format), then
loads the folder with timm and prints the largest difference to the sslvit encoder's features. An
--output that holds files is refused; --overwrite replaces an earlier export whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslvit.checkpoints import EXPORT_CONFIG, EXPORT_WEIGHTS, export_checkpoint, timm_from_export, timm_max_difference
from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_flags import add_overwrite_arg
from sslvit.errors import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="Lightning .ckpt of any sslvit method")
    parser.add_argument("--output", default="exported", help="folder to write model.safetensors and config.json to")
    parser.add_argument("--image-size", type=int, help="input size to export for (default: the evaluation size)")
    parser.add_argument(
        "--pooling", choices=["cls", "mean"], default="cls", help="what timm's model(images) returns: CLS or mean token"
    )
    add_overwrite_arg(parser, "export")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        backbone, info = export_checkpoint(
            args.checkpoint, args.output, args.image_size, args.pooling, overwrite=args.overwrite
        )
    size, folder = info.image_size, Path(args.output)
    difference = timm_max_difference(backbone, timm_from_export(folder), size, args.pooling)
    method = info.method or "the checkpoint"
    print(
        f"wrote {folder / EXPORT_WEIGHTS} and {folder / EXPORT_CONFIG}: the encoder of {method}, "
        f"{size}x{size} px, {backbone.num_features} features"
    )
    print(f"timm check: largest |timm - sslvit| feature difference {difference:.2e}")
    print(f'load it with: timm.create_model("local-dir:{folder}", pretrained=True)')


if __name__ == "__main__":
    main()
