"""The flags the scripts in ``tools/`` share, in groups a tool adds to its parser.

A tool takes ``--checkpoint`` (an sslvit Lightning ``.ckpt`` or export, or weights trained elsewhere:
official MAE/BEiT/DINO, timm; :func:`add_checkpoint_args`) and data as ``--data-root DIR`` (an ImageFolder
with ``train/`` and ``val/``) or ``--dataset NAME`` (cifar10, cifar100, stl10 from torchvision, or the
offline ``digits``; :func:`add_data_args`). The evaluation tools add features, precision, device, cache and
seed (:func:`add_feature_args`), low-shot subsets (:func:`add_subset_args`) and how settings are chosen
(:func:`add_selection_args`); :meth:`sslvit.cli.evaluation.Evaluation.from_args` reads them all.
"""

from __future__ import annotations

import argparse

from sslvit.eval.features import default_cache_dir


def add_checkpoint_args(parser: argparse.ArgumentParser, random_init: bool = True, outside: bool = True) -> None:
    """``--checkpoint`` (any format :func:`~sslvit.checkpoints.load_backbone` reads), ``--random-init``, and for
    weights trained elsewhere ``--arch``/``--num-heads`` (what their shapes do not say)."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="an sslvit Lightning .ckpt or export folder, an official MAE/BEiT/DINO .pth, a timm ViT state dict "
        "(.pth/.safetensors) or a timm hub folder (config.json + model.safetensors); the format is read from the keys",
    )
    if outside:
        parser.add_argument(
            "--arch",
            help="for a plain state dict: the timm model name the weights come from (e.g. vit_small_patch16_224) or an "
            "sslvit preset (vit_tiny ... vit_huge); sizes are read from the weights' shapes",
        )
        parser.add_argument(
            "--num-heads",
            type=int,
            help="for a plain state dict: attention heads (default: from --arch, or the "
            "ViT preset of the weights' width)",
        )
    if random_init:
        parser.add_argument(
            "--random-init",
            action="store_true",
            help="keep the checkpoint's architecture but use freshly initialised weights (the usual baseline)",
        )


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: an ``--output`` folder that holds files is refused without it (``sslvit.outputs``)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an earlier {what} in --output, whole: nothing of the old one remains (without it, an --output "
        "that holds files is refused)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="an ImageFolder root holding train/ and val/ (or torchvision's data root)")
    parser.add_argument(
        "--dataset",
        choices=["imagefolder", "webdataset", "cifar10", "cifar100", "stl10", "digits"],
        help="default: imagefolder when --data-root is given, else digits",
    )
    parser.add_argument("--image-size", type=int, help="default: the image size the checkpoint was trained at")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)


def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and data arguments, plus how features are computed and cached."""
    add_checkpoint_args(parser)
    add_data_args(parser)
    parser.add_argument(
        "--features",
        "--pooling",
        dest="features",
        default="native",
        help="native (default: the method's own feature: CLS for MAE, mean patch token for BEiT, the mean of the "
        "patch-grid latents for CPC), or a backbone pooling: cls, mean (of patch tokens), cls_last<n> (e.g. cls_last4)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto (default): bf16 autocast where the device has bf16 matrix units (CUDA, CPUs with AMX), else fp32",
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"feature cache (default $SSLVIT_CACHE/features or {default_cache_dir()})"
    )
    parser.add_argument("--no-cache", action="store_true", help="always run the backbone; store nothing")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init weights and of the probe")
    parser.add_argument("--output", help="write the results as JSON to this file")


def add_subset_args(parser: argparse.ArgumentParser) -> None:
    """Low-shot evaluation: a class-balanced, seeded part of the train split, and repeats over seeds."""
    group = parser.add_argument_group("low-shot (class-balanced, seeded)")
    group.add_argument(
        "--train-fraction", type=float, help="train on this fraction of every class of the train split (e.g. 0.01)"
    )
    group.add_argument("--shots", type=int, help="train on N images of every class")
    group.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat with seeds --seed, --seed + 1, ... (new draws of the subset, new probe initialisations) and "
        "report the mean and sample standard deviation of top-1/top-5",
    )


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """How settings are chosen: on a held-out part of the train split (default), or on val (optimistic)."""
    parser.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.1,
        help="class-balanced, seeded fraction of the train split held out to choose settings (default 0.1); the "
        "chosen setting is then retrained on the whole train split and val is evaluated once",
    )
    parser.add_argument(
        "--select-on-val",
        action="store_true",
        help="choose settings by val accuracy and report that accuracy (optimistic; only to compare with papers "
        "that did so: the output says so)",
    )
