"""Linear probe of a checkpoint's frozen encoder (MAE protocol: BatchNorm without affine + linear layer).

    python tools/linear_probe.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --output linear.json
    python tools/linear_probe.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --protocol \\
        --output linear-protocol.json

Default: heads trained on cached features of the eval transform (no augmentation), one head per
learning rate, all on the same batches; the best on the val split is reported. --protocol trains
on RandomResizedCrop + flip images through the frozen encoder every epoch instead, as papers do.
"""

from __future__ import annotations

import argparse

from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_args import Evaluation, add_feature_args, write_json
from sslvit.errors import one_line_errors
from sslvit.eval.linear import DEFAULT_BASE_LRS, LinearProbeResult, linear_probe, linear_probe_protocol


def table(result: LinearProbeResult) -> str:
    lines = ["  base lr   top-1   top-5   train loss"]
    for lr, acc in sorted(result.per_lr.items()):
        mark = "*" if lr == result.lr else " "
        lines.append(f"{mark}{lr:>8g}  {acc['top1']:6.2f}  {acc['top5']:6.2f}  {acc['train_loss']:11.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_feature_args(parser)
    parser.add_argument("--protocol", action="store_true", help="augmented images through the encoder every epoch")
    parser.add_argument("--epochs", type=int, help="default: 100 on cached features, 90 with --protocol (MAE)")
    parser.add_argument("--probe-batch-size", type=int, help="default: 1024 on cached features, 256 with --protocol")
    parser.add_argument("--warmup-epochs", type=float, default=10)
    parser.add_argument("--optimizer", choices=["lars", "sgd"], default="lars", help="LARS (MAE) or SGD, momentum 0.9")
    parser.add_argument(
        "--lrs", type=float, nargs="+", help=f"base learning rates per 256 images (default {dict(DEFAULT_BASE_LRS)})"
    )
    parser.add_argument(
        "--crop-scale", type=float, nargs=2, default=[0.08, 1.0], help="--protocol RandomResizedCrop area range"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    common = dict(base_lrs=args.lrs, warmup_epochs=args.warmup_epochs, optimizer=args.optimizer, seed=args.seed)
    with one_line_errors(parser.prog):
        evaluation = Evaluation.from_args(args)
        device = evaluation.device
        if args.protocol:
            val = evaluation.features("val")
            train = None

            def progress(epoch: int, seconds: float) -> None:
                print(f"epoch {epoch + 1}/{args.epochs or 90}: {seconds:.1f} s", flush=True)

            result = linear_probe_protocol(
                evaluation.backbone, evaluation.datamodule, val, args.pooling, epochs=args.epochs or 90,
                batch_size=args.probe_batch_size or 256, crop_scale=args.crop_scale, device=device,
                progress=progress, **common,
            )  # fmt: skip
        else:
            train, val = evaluation.features("train"), evaluation.features("val")
            result = linear_probe(
                train, val, epochs=args.epochs or 100, batch_size=args.probe_batch_size or 1024, device=device,
                **common,
            )  # fmt: skip

    evaluation.seconds["probe"] = result.seconds
    s = result.settings
    print(evaluation.headline(train, val))
    what = "cached features" if s["path"] == "cached" else f"augmented images (crop scale {tuple(s['crop_scale'])})"
    print(
        f"linear probe on {what}: {s['optimizer'].upper()}, {s['epochs']} epochs, batch {s['batch_size']}, "
        f"warmup {s['warmup_epochs']:g}, {s['num_train']} train / {s['num_val']} val, {result.seconds:.1f} s"
    )
    print(table(result))
    record = {**result.to_dict(), **evaluation.describe(train, val), "seconds": evaluation.seconds}
    record["num_train"] = s["num_train"]
    if args.output:
        print(f"wrote {write_json(args.output, record)}")
    return record


if __name__ == "__main__":
    main()
