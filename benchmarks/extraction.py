"""Feature extraction speed: images/s of encoding a split, before and now, against timm on the same weights.

    python benchmarks/extraction.py --data-root ../shared/data/cifar10 --images 2000 --output extraction.json
    python benchmarks/extraction.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10

Variants, all on the first --images images of the val split with the evaluation transform, take
turns for --rounds rounds after --warmup uncounted ones, in one process (a busy machine slows all of
them alike); the median and the best round are reported, with each variant's largest feature
difference from `before` and the smallest cosine similarity to it:

  before           the extraction as it was: a DataLoader with --num-workers processes, batches of
                   --batch-size, torch.no_grad, fp32 (tools/knn_eval.py's defaults)
  sslvit           sslvit.eval.extract_features now, on the loader the tools build (precision auto)
  sslvit-fp32      the same in fp32
  sslvit-w0/-w1    the same with 0 / 1 loader workers
  timm, timm-fp32  timm's VisionTransformer.forward_features (CLS) on the same weights and loader,
                   inference mode, with the precision of `sslvit` / in fp32
  sslvit-model, timm-model (and -fp32)
                   the models alone on images decoded beforehand: the ceiling without decoding

Without --checkpoint the encoder is a random-init ViT-Tiny/4 at 32 px (the CIFAR-10 config's
architecture; speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import timm
import torch
from torch.utils.data import DataLoader, Subset

from sslvit.checkpoints import CheckpointInfo, load_backbone
from sslvit.cli.parser import ToolParser
from sslvit.data import SSLDataModule
from sslvit.errors import one_line_errors
from sslvit.eval.encode import resolve_precision
from sslvit.eval.features import extract_features
from sslvit.nn.backbone import TIMM_ARCH, VisionTransformer, ViTConfig
from sslvit.runtime import tune_cpu_allocator

Variant = Callable[[], torch.Tensor]


def gflop_per_image(config: ViTConfig, image_size: int) -> float:
    """2 x the multiply-adds of one forward pass: patch embedding, qkv, attention, projection, MLP."""
    dim, depth, _ = config.dims
    tokens = 1 + (image_size // config.patch_size) ** 2
    hidden = int(dim * config.mlp_ratio)
    per_block = tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * tokens * tokens * dim
    embed = (tokens - 1) * dim * config.in_chans * config.patch_size**2
    return 2 * (depth * per_block + embed) / 1e9


def build(args: argparse.Namespace) -> tuple[VisionTransformer, SSLDataModule]:
    torch.manual_seed(0)
    if args.checkpoint:
        backbone, info = load_backbone(args.checkpoint)  # the allocator is tuned in main, as the tools do
    else:
        backbone = VisionTransformer(ViTConfig(arch="vit_tiny", img_size=32, patch_size=4)).eval()
        info = CheckpointInfo(source="random-init", image_size=32, random_init=True)
    dataset = "imagefolder" if args.data_root else "digits"
    return backbone, info.eval_datamodule(dataset, args.data_root, args.batch_size, args.num_workers)


def variants(args: argparse.Namespace, backbone: VisionTransformer, data: SSLDataModule) -> dict[str, Variant]:
    dataset = data.build_dataset("val", data.eval_transform())
    subset = Subset(dataset, list(range(min(args.images, len(dataset)))))
    reference = timm.create_model(TIMM_ARCH[backbone.config.arch], **backbone.config.timm_kwargs()).eval()
    reference.load_state_dict(backbone.state_dict())
    decoded = torch.stack([image for image, _ in subset])  # [N, C, H, W] for the model-only rows
    auto = resolve_precision("auto", "cpu")

    def loader(workers: int | None = None) -> DataLoader:
        workers = args.num_workers if workers is None else workers
        return DataLoader(subset, batch_size=args.batch_size, num_workers=workers)

    def before() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([backbone.forward_features(images)[:, 0] for images, _ in loader()])

    def ours(precision: str = "auto", workers: int | None = None) -> Variant:
        return lambda: extract_features(backbone, loader(workers), precision=precision).features

    def timm_loop(precision: str) -> Variant:
        def run() -> torch.Tensor:
            with torch.inference_mode(), autocast(precision):
                return torch.cat([reference.forward_features(images)[:, 0].float() for images, _ in loader()])

        return run

    def model_only(model: torch.nn.Module, precision: str) -> Variant:
        def run() -> torch.Tensor:
            with torch.inference_mode(), autocast(precision):
                return torch.cat([model.forward_features(x)[:, 0].float() for x in decoded.split(args.batch_size)])

        return run

    return {
        "before": before,
        "sslvit": ours(),
        "sslvit-fp32": ours("fp32"),
        "sslvit-w0": ours(workers=0),
        "sslvit-w1": ours(workers=1),
        "timm": timm_loop(auto),
        "timm-fp32": timm_loop("fp32"),
        "sslvit-model": model_only(backbone, auto),
        "timm-model": model_only(reference, auto),
        "sslvit-model-fp32": model_only(backbone, "fp32"),
        "timm-model-fp32": model_only(reference, "fp32"),
    }


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # as the tools do
    with one_line_errors(parser.prog):
        backbone, data = build(args)
    runs = variants(args, backbone, data)
    if args.variants:
        runs = {name: runs[name] for name in ["before", *args.variants] if name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    features: dict[str, torch.Tensor] = {}
    for round_ in range(args.warmup + args.rounds):  # warm-up rounds (kernel selection, JIT) are not counted
        for name, run in runs.items():
            start = time.perf_counter()
            features[name] = run()
            if round_ >= args.warmup:
                seconds[name].append(time.perf_counter() - start)
    count = features["before"].shape[0]
    flop = gflop_per_image(backbone.config, data.image_size)
    rows = {}
    for name, times in seconds.items():
        rate = count / statistics.median(times)
        difference = (features[name] - features["before"]).abs().max().item()
        cosine = torch.nn.functional.cosine_similarity(features[name], features["before"]).min().item()
        rows[name] = {
            "images_per_s": rate,
            "best_images_per_s": count / min(times),
            "gflops": rate * flop,
            "speedup_vs_before": rate / (count / statistics.median(seconds["before"])),
            "max_abs_difference": difference,
            "min_cosine": cosine,
        }
    print(
        f"{count} images at {data.image_size} px, batch {args.batch_size}, {args.num_workers} loader workers, "
        f"{torch.get_num_threads()} threads, {flop:.3f} GFLOP/image, bf16 matrix units: "
        f"{resolve_precision('auto', 'cpu') == 'bf16'}; median of {args.rounds} rounds"
    )
    print(f"{'variant':18s} {'images/s':>9s} {'best':>7s} {'GFLOP/s':>8s} {'vs before':>9s} {'max |diff|':>10s} cosine")
    for name, row in rows.items():
        print(
            f"{name:18s} {row['images_per_s']:9.1f} {row['best_images_per_s']:7.1f} {row['gflops']:8.1f} "
            f"{row['speedup_vs_before']:8.2f}x {row['max_abs_difference']:10.2e} {row['min_cosine']:.6f}"
        )
    record = {
        "images": count,
        "image_size": data.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "gflop_per_image": flop,
        "rows": rows,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.output}")
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--checkpoint", help="any checkpoint load_backbone reads (default: random-init ViT-Tiny/4)")
    parser.add_argument("--data-root", help="an ImageFolder with val/ (default: the offline digits)")
    parser.add_argument("--images", type=int, default=2000, help="images of the val split encoded per variant")
    parser.add_argument("--batch-size", type=int, default=256, help="the tools' default")
    parser.add_argument("--num-workers", type=int, default=2, help="the tools' default")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every variant; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--variants", nargs="+", help="only these (and before)")
    parser.add_argument("--output", help="write the rows as JSON")
    return parser


if __name__ == "__main__":
    main()
