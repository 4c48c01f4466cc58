"""Pretrain for a fixed wall-clock budget, then evaluate with kNN: what a method learns per unit of compute.

    python benchmarks/budget_run.py --config configs/mae/cifar10_vit_tiny.yaml --data-root ../shared/data/cifar10 \\
        --minutes 10 --train-images 10000 --run-dir runs/budget-mae-cifar10 --output budget.json

1. a short probe run measures the training throughput of the config on this machine, data loading included;
2. ``max_steps`` is set so that the cosine schedule ends with the budget (``max_time`` stops training at
   the budget in any case), with ``--warmup-steps`` of linear warmup;
3. ``sslvit fit`` trains on a class-balanced subset of ``--train-images`` images;
4. ``tools/knn_eval.py`` evaluates the final checkpoint (CLS token, k = 20, T = 0.07, bank = the whole
   labelled train split, queries = val).
Extra ``sslvit fit`` settings go after ``--``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

from sslvit.cli import run_cli
from sslvit.cli.parser import ToolParser

REPO = Path(__file__).resolve().parents[1]


class StepClock(L.Callback):
    """Wall-clock times at the end of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ and val/")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--train-images", type=int, default=10000, help="class-balanced pretraining subset")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--probe-steps", type=int, default=25, help="steps of the throughput probe")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings, after --")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    data = [
        "--data.dataset",
        "imagefolder",
        "--data.root",
        args.data_root,
        "--data.train_subset",
        str(args.train_images),
    ]
    common = [*data, "--trainer.callbacks", "[]", "--trainer.check_val_every_n_epoch", "1000", *args.fit_args]
    # 1. throughput probe, the first steps (start-up, first batches) left out
    clock = StepClock()
    with tempfile.TemporaryDirectory() as probe_dir:
        probe_args = ["--trainer.max_steps", str(args.probe_steps), "--trainer.max_epochs", "-1"]
        probe = run_cli(["fit", "--config", args.config, "--trainer.default_root_dir", probe_dir, *common, *probe_args],
                        callbacks=[clock])  # fmt: skip
    batch = probe.datamodule.batch_size
    skip = min(5, len(clock.times) - 2)
    seconds_per_step = (clock.times[-1] - clock.times[skip]) / (len(clock.times) - 1 - skip)
    budget_s = args.minutes * 60
    steps = int(budget_s / seconds_per_step)
    print(f"probe: {batch / seconds_per_step:.1f} images/s -> {steps} steps in {args.minutes:g} minutes")

    # 2-3. the budget run
    clock = StepClock()
    run_dir = Path(args.run_dir)
    minutes, seconds = divmod(int(budget_s), 60)
    budget = [
        "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
        "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}",
        "--model.init_args.warmup_steps", str(args.warmup_steps),
    ]  # fmt: skip
    fit_args = ["fit", "--config", args.config, "--trainer.default_root_dir", str(run_dir), *common, *budget]
    cli = run_cli(fit_args, callbacks=[clock])
    trained_s = clock.times[-1] - clock.times[0]
    done = cli.trainer.global_step
    print(f"trained {done} steps ({done * batch} images) in {trained_s / 60:.1f} minutes")

    # 4. kNN on the final weights, with the user's command
    knn_json = run_dir / "knn.json"
    knn_command = [
        sys.executable,
        str(REPO / "tools" / "knn_eval.py"),
        "--checkpoint",
        str(run_dir / "checkpoints" / "last.ckpt"),
        "--data-root",
        args.data_root,
        "--output",
        str(knn_json),
    ]
    subprocess.run(knn_command, check=True)
    knn = json.loads(knn_json.read_text())
    result = {
        "config": args.config, "minutes": args.minutes, "train_images": args.train_images, "batch_size": batch,
        "probe_images_per_s": batch / seconds_per_step, "planned_steps": steps, "steps": done,
        "images_per_s": done * batch / trained_s, "final_loss": float(cli.trainer.callback_metrics["train/loss"]),
        "knn_top1": knn["top1"], "knn_top5": knn["top5"], "fit_args": args.fit_args,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
