"""Pretrain for a fixed wall-clock budget, then evaluate with kNN: what a method learns per unit of compute.

    python benchmarks/budget_run.py --config configs/mae/cifar10_vit_tiny.yaml --data-root ../shared/data/cifar10 \\
        --minutes 10 --train-images 10000 --run-dir runs/budget-mae-cifar10 --output budget.json

1. ``sslvit fit`` trains on a class-balanced subset of ``--train-images`` images with
   ``sslvit.cli.TimeBudget``: the warmup + cosine schedule follows the clock (progress = elapsed /
   budget, warmup the first ``--warmup-fraction``), so every method spends the same wall time whatever
   its speed, start-up, tokenizer fitting or a busy machine (no throughput probe to get wrong);
2. ``tools/knn_eval.py`` evaluates the final checkpoint and a random initialisation of the same
   architecture (the method's native features, k = 20, T = 0.07, bank = the whole labelled train
   split, queries = val), as a user would run it.
Extra ``sslvit fit`` settings go after ``--``. ``benchmarks/results.py`` is the full table (linear probe,
fine-tuning, the official MAE code); this is the quick single-method version.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sslvit.cli import TimeBudget, run_cli
from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ and val/")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--train-images", type=int, default=10000, help="class-balanced pretraining subset")
    parser.add_argument("--warmup-fraction", type=float, default=0.05, help="part of the budget spent warming up")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings, after --")
    return parser


def knn(checkpoint: Path, data_root: str, output: Path, *extra: str) -> dict:
    command = [sys.executable, str(REPO / "tools" / "knn_eval.py"), "--checkpoint", str(checkpoint),
               "--data-root", data_root, "--output", str(output), *extra]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(output.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    budget = TimeBudget(minutes=args.minutes, warmup_fraction=args.warmup_fraction)
    fit_args = [
        "fit", "--config", args.config, "--trainer.default_root_dir", str(run_dir),
        "--data.dataset", "imagefolder", "--data.root", args.data_root, "--data.train_subset", str(args.train_images),
        "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", "-1", *args.fit_args,
    ]  # fmt: skip
    with one_line_errors(parser.prog):
        cli = run_cli(fit_args, callbacks=[budget])
    batch, steps = cli.datamodule.batch_size, cli.trainer.global_step
    print(f"trained {steps} steps ({steps * batch} images) in {budget.elapsed / 60:.1f} minutes")

    last = run_dir / "checkpoints" / "last.ckpt"
    trained = knn(last, args.data_root, run_dir / "knn.json")
    random_init = knn(last, args.data_root, run_dir / "knn-random.json", "--random-init")
    result = {
        "config": args.config,
        "minutes": args.minutes,
        "train_images": args.train_images,
        "batch_size": batch,
        "steps": steps,
        "images_seen": steps * batch,
        "seconds": budget.elapsed,
        "images_per_s": steps * batch / budget.elapsed,
        "final_loss": float(cli.trainer.callback_metrics["train/loss"]),
        "features": trained.get("features"),
        "knn_top1": trained["top1"],
        "knn_top5": trained["top5"],
        "random_init_knn_top1": random_init["top1"],
        "fit_args": args.fit_args,
    }
    trained_top1, random_top1 = trained["top1"], random_init["top1"]
    print(f"kNN top-1 on val after {args.minutes:g} minutes: {trained_top1:.2f}%; random init {random_top1:.2f}%")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
