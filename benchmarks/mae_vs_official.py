"""sslvit's MAE against facebookresearch/mae's training code at equal budgets: kNN of both, over seeds and variants.

    python benchmarks/mae_vs_official.py --mae-repo /path/to/mae --data-root ../shared/data/cifar10 \\
        --steps 500 --seeds 0 1 --variants official sslvit sslvit-pil-loader --output mae-vs-official.json
    python benchmarks/mae_vs_official.py ... --petaflops 0.05 ...   # or --minutes 10: the same budget for each

Every variant pretrains the CIFAR-10 config's architecture (``--config``) with each seed on the class-balanced
``--train-images`` subset drawn with that seed (the same images for every variant but ``reference``) for the
budget: ``--steps`` steps of the config's batch (warmup ``--warmup-steps``, then cosine; the default),
``--petaflops`` (each counts the FLOPs of its own step) or ``--minutes``, with the harness
(``benchmarks/harness.py``). Then its encoder's CLS features, with the checkpoint's preprocessing, are
evaluated by kNN (k = 20, T = 0.07) with a class-balanced ``--train-images`` of train (seed 0) as the
bank and the val split as queries. Variants switch one difference at a time:

- ``official``: ``benchmarks/official_mae.py`` (their model, initialisation, schedule, PIL loader,
  weight-decay groups);
- ``reference``: the project's reference loop around facebookresearch/mae's model
  (``--reference-script``, by default ``../shared/reference/mae_official_short.py``: their model trained
  as their ``main_pretrain.py`` does, written independently of ``official_mae.py``; it trains on the
  first ``--train-images / 10`` files of each class and saves the official checkpoint format);
- ``sslvit``: ``sslvit fit`` with the config as it is (crops made on the device from uint8 images);
- ``sslvit-pil-loader``: the same with torchvision's PIL crops in loader workers (``data.on_device: false``,
  ``data.fast_decode: false``); ``sslvit-decode-crop``: with the fast file path (``data.on_device: false``);
- any other name ``sslvit:<key>=<value>,...``: ``sslvit fit`` with those overrides (e.g.
  ``sslvit:data.num_workers=0``).

Prints a table (mean and std over seeds, and each variant's difference to the first, paired by seed) and
writes every run's record as JSON. A variant's run directory that is done is read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import REPO, EvalSplit, RunBudget, add_budget_args, evaluate_encoder, fit, fit_official
from sslvit.cli.parser import ToolParser
from sslvit.errors import ConfigError, one_line_errors
from sslvit.eval.seeds import paired_difference, spread

VARIANTS = {
    "sslvit": [],
    # torchvision's RandomResizedCrop on PIL images in loader workers (the reference's transform, keyed RNG)
    "sslvit-pil-loader": ["--data.on_device", "false", "--data.fast_decode", "false"],
    # sslvit's fast file path: JPEG decoded by torchvision.io, cropped and resized as uint8 tensors in workers
    "sslvit-decode-crop": ["--data.on_device", "false"],
}
DEFAULT_BUDGET = RunBudget(steps=500)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--mae-repo", help="a checkout of facebookresearch/mae (`official` and `reference` variants)")
    parser.add_argument(
        "--reference-script",
        default=str(REPO.parent / "shared" / "reference" / "mae_official_short.py"),
        help="the reference training loop of the `reference` variant",
    )
    parser.add_argument("--config", default="configs/mae/cifar10_vit_tiny.yaml")
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ and val/")
    parser.add_argument("--train-images", type=int, default=10000)
    add_budget_args(parser, "pretraining (every variant's)", default=DEFAULT_BUDGET)
    parser.add_argument("--warmup-steps", type=int, default=100, help="with --steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["official", "sslvit", "sslvit-pil-loader"])
    parser.add_argument("--run-dir", default="runs/mae-vs-official")
    parser.add_argument("--output", help="write every run's record as JSON")
    return parser


def sslvit_overrides(variant: str) -> list[str]:
    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant.startswith("sslvit:"):
        pairs = [p.split("=", 1) for p in variant.removeprefix("sslvit:").split(",")]
        return [arg for key, value in pairs for arg in (f"--{key}", value)]
    raise ConfigError(
        f"unknown variant {variant!r}: official, reference, {', '.join(VARIANTS)} or sslvit:<key>=<value>,..."
    )


def pretrain(args: argparse.Namespace, variant: str, seed: int, run: Path) -> str:
    """Train one variant (unless its run is done); returns its checkpoint."""
    budget = RunBudget.from_args(args, DEFAULT_BUDGET)
    if variant == "official":
        official = fit_official(
            args.mae_repo, args.config, run, budget, seed, args.train_images, args.data_root, args.warmup_steps
        )
        return official.checkpoint
    if variant == "reference":  # written independently of the harness: its own loop, schedule and subset
        checkpoint = run / "mae.pth"
        if budget.kind != "steps":
            raise ConfigError("the reference variant trains for --steps only")
        command = [sys.executable, args.reference_script, args.data_root, "--mae-repo", args.mae_repo,
                   "--train-images", str(args.train_images), "--steps", str(budget.steps), "--warmup",
                   str(args.warmup_steps), "--seed", str(seed), "--save", str(checkpoint),
                   "--output", str(run / "reference.json")]  # fmt: skip
        run.mkdir(parents=True, exist_ok=True)
        if not checkpoint.is_file():
            subprocess.run(command, check=True, cwd=REPO)
        return str(checkpoint)
    overrides = sslvit_overrides(variant) + ["--trainer.enable_progress_bar", "false"]
    if budget.kind == "steps":
        overrides = ["--model.init_args.warmup_steps", str(args.warmup_steps), *overrides]
    return fit(args.config, run, budget, seed, overrides, args.train_images, data_root=args.data_root).checkpoint


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    with one_line_errors("mae_vs_official.py"):
        return compare(args)


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    for variant in args.variants:  # a misspelt variant fails before hours of training, not after
        if variant not in ("official", "reference"):
            sslvit_overrides(variant)
    bank = EvalSplit("val", train_images=args.train_images, seed=0)
    records = []
    for seed in args.seeds:
        for variant in args.variants:
            run = Path(args.run_dir) / f"{variant.replace(':', '_').replace('=', '-')}-seed{seed}"
            checkpoint = pretrain(args, variant, seed, run)
            top1 = evaluate_encoder(checkpoint, args.data_root, bank, features="cls", linear=False)["knn_top1"]
            records.append({"variant": variant, "seed": seed, "knn_top1": top1, "run": str(run)})
            print(f"{variant:<28} seed {seed}: kNN top-1 {top1:.2f}%", flush=True)
    summary = summarize(records, args.variants)
    if args.output:
        record = {"settings": vars(args), "runs": records, "summary": summary}
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    return records


def summarize(records: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Print and return each variant's kNN over seeds and its paired difference to the first variant."""
    by_variant = {v: {r["seed"]: r["knn_top1"] for r in records if r["variant"] == v} for v in variants}
    by_variant = {v: seeds for v, seeds in by_variant.items() if seeds}
    first = next(iter(by_variant), None)
    summary: dict[str, Any] = {}
    print(f"\n{'variant':<28} kNN top-1 over seeds (mean ± sample std, 95% CI)   vs {first} (paired by seed)")
    for variant, seeds in by_variant.items():
        own = spread([seeds[s] for s in sorted(seeds)])
        summary[variant] = {"knn_top1": own.to_dict()}
        line = f"{variant:<28} {own!s:<48}"
        if variant != first and set(seeds) & set(by_variant[first]):
            diff = paired_difference(seeds, by_variant[first])
            summary[variant][f"minus_{first}"] = diff.to_dict()
            line += f"  {diff.mean:+.2f} (95% CI {diff.low:+.2f} to {diff.high:+.2f})"
        print(line)
    return summary


if __name__ == "__main__":
    main()
