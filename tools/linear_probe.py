"""Linear probe of a checkpoint's frozen encoder (MAE protocol: BatchNorm without affine + linear layer).

    python tools/linear_probe.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --output linear.json
    python tools/linear_probe.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --protocol \\
        --output linear-protocol.json

Default: heads trained on cached features of the eval transform (no augmentation), one head per
learning rate, all on the same batches. The learning rate is chosen on a class-balanced 10% of the
train split held out (--held-out-fraction), retrained on the whole train split, and val is reported
once; --select-on-val reports the best head on val instead (optimistic, as some papers do; the output
says so). --protocol trains on RandomResizedCrop + flip images through the frozen encoder every epoch,
as papers do. Low-shot: --train-fraction 0.01 or --shots N, --seeds 3 for mean and standard deviation.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from sslvit.cli.evaluation import Evaluation
from sslvit.cli.low_shot import describe_subset, finish_record, seed_record
from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_flags import add_feature_args, add_selection_args, add_subset_args
from sslvit.errors import ConfigError, one_line_errors
from sslvit.eval.features import Features
from sslvit.eval.linear import CACHED_SETTINGS, DEFAULT_BASE_LRS, PROTOCOL_SETTINGS, ProbeSettings, linear_probe
from sslvit.eval.linear_protocol import linear_probe_protocol
from sslvit.eval.selection import LinearProbeResult
from sslvit.eval.subsets import held_out_split


def table(result: LinearProbeResult) -> str:
    """Every head's accuracy where the learning rate was chosen, then the reported val accuracy."""
    split = "held-out" if result.selection == "held_out" else "val"
    lines = [result.note, f"  base lr   {split} top-1   top-5   train loss"]
    for lr, acc in sorted(result.per_lr.items()):
        mark = "*" if lr == result.lr else " "
        lines.append(
            f"{mark}{lr:>8g}  {acc['top1']:{len(split) + 6}.2f}  {acc['top5']:6.2f}  {acc['train_loss']:11.4f}"
        )
    what = {"held_out": "reported once", "val": "best of the sweep on val, optimistic", "single": "one learning rate"}
    lines.append(
        f"val ({what[result.selection]}): top-1 {result.top1:.2f}, top-5 {result.top5:.2f} at base lr {result.lr:g}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_feature_args(parser)
    add_subset_args(parser)
    add_selection_args(parser)
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


def probe_settings(args: argparse.Namespace, seed: int) -> ProbeSettings:
    """The probe settings of the flags for one seed, on the defaults of the path (cached features or --protocol)."""
    defaults = PROTOCOL_SETTINGS if args.protocol else CACHED_SETTINGS
    return replace(
        defaults,
        base_lrs=args.lrs,
        epochs=args.epochs or defaults.epochs,
        batch_size=args.probe_batch_size or defaults.batch_size,
        warmup_epochs=args.warmup_epochs,
        optimizer=args.optimizer,
        seed=seed,
        selection="val" if args.select_on_val else "held_out",
        held_out_fraction=args.held_out_fraction,
    )


def check(args: argparse.Namespace, evaluation: Evaluation) -> None:
    """Every setting against every seed's train subset, from the labels alone: before the first image is encoded."""
    probe_settings(args, args.seed)  # epochs and batch size
    if args.warmup_epochs < 0:
        raise ConfigError(f"--warmup-epochs must be non-negative, got {args.warmup_epochs}")
    if args.lrs is not None and min(args.lrs) <= 0:
        raise ConfigError(f"--lrs must be positive, got {args.lrs}")
    if not 0.0 < args.crop_scale[0] <= args.crop_scale[1] <= 1.0:
        raise ConfigError(f"--crop-scale must satisfy 0 < min <= max <= 1, got {args.crop_scale}")
    if not args.select_on_val:
        labels = evaluation.train_labels()
        for seed, positions in evaluation.train_subsets().items():
            held_out_split(labels if positions is None else labels[positions], args.held_out_fraction, seed)


def probe(args: argparse.Namespace, evaluation: Evaluation, train: Features | None, val: Features, seed: int) -> dict:
    """One probe for ``seed`` (subset draw, heads, shuffling, held-out part): print its table, return its record."""
    settings = probe_settings(args, seed)
    positions = evaluation.train_subsets()[seed]
    if positions is not None:
        print(f"train: {describe_subset(args, len(positions), seed)}")
    if not args.protocol:
        part = train if positions is None else train.subset(positions)
        result = linear_probe(part, val, settings, evaluation.device)
    else:

        def progress(epoch: int, seconds: float) -> None:
            print(f"epoch {epoch + 1}: {seconds:.1f} s", flush=True)

        result = linear_probe_protocol(
            evaluation.model,
            evaluation.datamodule,
            val,
            evaluation.pooling,
            settings,
            crop_scale=args.crop_scale,
            device=evaluation.device,
            progress=progress,
            indices=positions,
            precision=evaluation.precision,
        )
    s = result.settings
    what = "cached features" if s["path"] == "cached" else f"augmented images (crop scale {tuple(s['crop_scale'])})"
    print(
        f"linear probe on {what}: {s['optimizer'].upper()}, {s['epochs']} epochs, batch {s['batch_size']}, "
        f"warmup {s['warmup_epochs']:g}, {s['num_train']} train / {s['num_val']} val, {result.seconds:.1f} s"
    )
    print(table(result))
    return seed_record(args, result.to_dict(), seed, positions)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        evaluation = Evaluation.from_args(args)
        check(args, evaluation)
        train = None if args.protocol else evaluation.features("train")
        val = evaluation.features("val")
        print(evaluation.headline(train, val))
        records = [probe(args, evaluation, train, val, seed) for seed in evaluation.train_subsets()]

    evaluation.seconds["probe"] = sum(r["seconds"] for r in records)
    record = {**records[0], **evaluation.describe(train, val), "seconds": evaluation.seconds}
    record["num_train"] = records[0]["num_train"]
    return finish_record(record, records, args.output)


if __name__ == "__main__":
    main()
