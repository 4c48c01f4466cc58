"""What ``tools/finetune.py`` runs: ``sslvit fit`` of :class:`sslvit.eval.FineTune` on a checkpoint, then a report.

The tool turns its options into ``sslvit fit`` arguments (:func:`fit_arguments`), so a fine-tuning run
from the tool has everything a run from the command line has (config, run directory, resume, NaN guard,
metrics.csv, TensorBoard) and can be repeated with ``sslvit fit --config <run dir>/config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.loading import load_backbone
from sslvit.cli.app import run_cli
from sslvit.cli.parser import positive_int
from sslvit.cli.run_dir import new_run_dir
from sslvit.cli.tool_flags import add_checkpoint_args
from sslvit.errors import ConfigError
from sslvit.eval.features import dataset_targets


def add_finetune_args(parser: argparse.ArgumentParser, default_config: str) -> None:
    add_checkpoint_args(parser)
    parser.add_argument("--config", default=default_config, help=f"fine-tuning recipe (default {default_config})")
    parser.add_argument("--data-root", help="an ImageFolder root with train/ and val/ (or torchvision's data root)")
    parser.add_argument(
        "--dataset",
        choices=["imagefolder", "cifar10", "cifar100", "stl10", "digits"],
        help="default: imagefolder when --data-root is given, else the config's",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs", type=positive_int, help="train this many epochs, at least 1 (default: the config's)"
    )
    length.add_argument(
        "--minutes", type=float, help="train for this wall-clock budget, the schedule following the clock"
    )
    length.add_argument(
        "--petaflops",
        type=float,
        help="train for this many PFLOPs of training steps (sslvit.cli.FlopBudget: the same steps on any machine)",
    )
    low_shot = parser.add_mutually_exclusive_group()
    low_shot.add_argument("--train-fraction", type=float, help="fine-tune on this fraction of the train split")
    low_shot.add_argument("--shots", type=int, help="fine-tune on N images of every class")
    parser.add_argument("--batch-size", type=int, help="images per device per step (default: the config's)")
    parser.add_argument("--num-workers", type=int, help="loader processes (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (head, --random-init weights, data order)")
    parser.add_argument("--run-dir", help="run directory (default a new runs/finetune-<date-time>)")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings, after --")


def fit_arguments(args: argparse.Namespace, info: CheckpointInfo, backbone: dict[str, Any]) -> list[str]:
    """The ``sslvit fit`` command line of a fine-tuning run of ``args.checkpoint`` (architecture ``backbone``)."""
    weights = "null" if args.random_init else str(args.checkpoint)
    # One line per group of flags, each next to its value, as a user types them.
    command = [
        "fit", "--config", args.config, "--seed_everything", str(args.seed),
        "--trainer.default_root_dir", args.run_dir,
        "--model.init_args.weights", weights, "--model.init_args.backbone", json.dumps(backbone),
        # the preprocessing the encoder was pretrained with
        "--data.image_size", str(backbone["img_size"]),
        "--data.mean", json.dumps(list(info.mean)),
        "--data.std", json.dumps(list(info.std)),
        "--data.eval_crop_fraction", str(info.eval_crop_fraction),
    ]  # fmt: skip
    dataset = args.dataset or ("imagefolder" if args.data_root else None)
    if dataset == "imagefolder" and not args.data_root:
        raise ConfigError("--dataset imagefolder needs --data-root DIR with train/ and val/ sub-folders")
    for key, value in (
        ("dataset", dataset),
        ("root", args.data_root),
        ("batch_size", args.batch_size),
        ("num_workers", args.num_workers),
    ):
        if value is not None:
            command += [f"--data.{key}", str(value)]
    if args.epochs is not None:
        command += ["--trainer.max_epochs", str(args.epochs), "--trainer.max_steps", "-1"]
    budget = budget_callback(args)
    if budget is not None:
        command += ["--trainer.max_epochs", "-1", "--trainer.max_steps", "-1"]
        command += ["--trainer.callbacks+", json.dumps(budget)]
    return [*command, *args.fit_args]


def budget_callback(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--minutes`` or ``--petaflops`` budget as a callback of the run's config, or None (epochs)."""
    if args.petaflops is not None:
        return {"class_path": "sslvit.cli.FlopBudget", "init_args": {"petaflops": args.petaflops}}
    if args.minutes is not None:
        return {"class_path": "sslvit.cli.TimeBudget", "init_args": {"minutes": args.minutes}}
    return None


def low_shot_size(args: argparse.Namespace, command: list[str]) -> int:
    """Images of the low-shot train subset: ``--shots`` per class, or ``--train-fraction`` of the split. The
    data module draws them class-balanced with its seed (``data.train_subset``), as equal per class as possible."""
    targets = dataset_targets(run_cli(command[1:], run=False).datamodule.build_dataset("train", None))  # no "fit"
    if args.shots is not None:
        if args.shots <= 0:
            raise ConfigError(f"--shots must be positive, got {args.shots}")
        return args.shots * len(set(targets))
    if not 0 < args.train_fraction <= 1:
        raise ConfigError(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    return max(len(set(targets)), round(args.train_fraction * len(targets)))


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune ``args.checkpoint`` (or its architecture from scratch) into ``args.run_dir`` (default: a new
    ``runs/finetune-<date>-<time>``) and return the JSON record."""
    if args.run_dir is not None:
        return fine_tune_into(args)
    with new_run_dir("runs/finetune") as run_dir:
        args.run_dir = str(run_dir)
        return fine_tune_into(args)


def fine_tune_into(args: argparse.Namespace) -> dict[str, Any]:
    encoder, info = load_backbone(args.checkpoint, arch=args.arch, num_heads=args.num_heads)
    backbone = {**encoder.config.to_dict(), "img_size": info.image_size}  # CPC: whole images, not its patches
    command = fit_arguments(args, info, backbone)
    if args.train_fraction is not None or args.shots is not None:
        command += ["--data.train_subset", str(low_shot_size(args, command))]
    start = time.perf_counter()
    cli = run_cli(command)
    seconds = time.perf_counter() - start
    history = list(cli.model.history)
    if not history:
        raise ConfigError("the run ended before any validation: train at least one epoch (--epochs, --minutes)")
    final, best = history[-1], max(history, key=lambda h: h["top1"])
    data = cli.datamodule
    root = str(Path(data.root).resolve()) if data.dataset_name != "digits" else None
    return {
        "top1": final["top1"],
        "top5": final["top5"],
        "loss": final["loss"],
        "epoch": final["epoch"],
        "step": final["step"],
        "best": best,
        "history": history,
        "checkpoint": str(args.checkpoint),
        "random_init": bool(args.random_init),
        "method": info.method,
        "pretrain_global_step": info.global_step,
        "config": args.config,
        "run_dir": args.run_dir,
        "dataset": data.dataset_name,
        "data_root": root,
        "image_size": data.image_size,
        "num_train": len(data._datasets[data.fit_split]),
        "num_val": len(data._datasets["val"]),
        "epochs": args.epochs,
        "minutes": args.minutes,
        "petaflops": args.petaflops,
        "train_fraction": args.train_fraction,
        "shots": args.shots,
        "seconds": seconds,
        "fit_arguments": command,
        "settings": json.loads(json.dumps(cli.config["fit"].as_dict(), default=str)),
    }


def table(record: dict[str, Any]) -> str:
    """One row per validation (epoch, step, val loss, top-1, top-5), ``*`` marking the best; then final and best."""
    lines = ["   epoch     step  val loss   top-1   top-5"]
    for row in record["history"]:
        mark = "*" if row == record["best"] else " "
        lines.append(
            f"{mark}{row['epoch']:>7g}  {row['step']:>7d}  {row['loss']:8.4f}  {row['top1']:6.2f}  {row['top5']:6.2f}"
        )
    best = record["best"]
    lines.append(f"final: top-1 {record['top1']:.2f}, top-5 {record['top5']:.2f} (epoch {record['epoch']:g})")
    lines.append(f"best:  top-1 {best['top1']:.2f}, top-5 {best['top5']:.2f} (epoch {best['epoch']:g}; chosen on val)")
    return "\n".join(lines)


def headline(record: dict[str, Any]) -> str:
    what = "random init of " if record["random_init"] else ""
    if record.get("petaflops"):
        length = f"{record['petaflops']:g} PFLOP"
    elif record["minutes"]:
        length = f"{record['minutes']:g} minutes"
    else:
        length = f"{record['history'][-1]['epoch']:g} epochs"
    return (
        f"checkpoint: {what}{record['checkpoint']}"
        + (f" (step {record['pretrain_global_step']})" if record["pretrain_global_step"] is not None else "")
        + f"\nfine-tuned with {record['config']} for {length} ({record['seconds'] / 60:.1f} minutes in all), "
        f"run directory {record['run_dir']}\n"
        f"data: {record['dataset']}, {record['num_train']} train / {record['num_val']} val images at "
        f"{record['image_size']}px; val top-1/top-5 after each epoch:"
    )
