"""Low-shot bookkeeping of the evaluation tools: the seeds of ``--seeds``, each seed's class-balanced train
subset (``--train-fraction``/``--shots``), its JSON record, and the mean and spread over seeds.

Computing and printing are apart: the functions here return records and lines; the tools print them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from sslvit.errors import ConfigError
from sslvit.eval.subsets import low_shot_indices, mean_and_std
from sslvit.outputs import write_json


def run_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds of ``--seeds`` repeats: ``--seed``, ``--seed + 1``, ..."""
    if getattr(args, "seeds", 1) < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    return [args.seed + i for i in range(getattr(args, "seeds", 1))]


def train_subset(args: argparse.Namespace, labels: Sequence[int] | torch.Tensor, seed: int) -> list[int] | None:
    """Positions of the low-shot subset of ``--train-fraction``/``--shots`` drawn with ``seed`` (class-balanced,
    sorted), or None for the whole train split."""
    fraction, shots = getattr(args, "train_fraction", None), getattr(args, "shots", None)
    if fraction is None and shots is None:
        return None
    return low_shot_indices(labels, fraction=fraction, shots=shots, seed=seed)


def describe_subset(args: argparse.Namespace, count: int, seed: int) -> str:
    """``1% of every class (450 images, seed 0)``, for the printed headline."""
    if getattr(args, "shots", None) is not None:
        return f"{args.shots} per class ({count} images, seed {seed})"
    return f"{args.train_fraction:.3g} of every class ({count} images, seed {seed})"


def seed_record(
    args: argparse.Namespace, record: dict[str, Any], seed: int, positions: list[int] | None
) -> dict[str, Any]:
    """One seed's JSON record: ``record`` with its ``seed`` and, for a low-shot subset, ``train_subset``."""
    if positions is None:
        return {**record, "seed": seed}
    subset = {"fraction": getattr(args, "train_fraction", None), "shots": getattr(args, "shots", None)}
    return {**record, "seed": seed, "train_subset": {**subset, "num_images": len(positions)}}


def over_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the JSON adds for several seeds' records (``top1``/``top5`` become the means, ``*_std``,
    ``per_seed``, ``seeds``); nothing for one seed."""
    if len(records) < 2:
        return {}
    return {**mean_and_std(records), "per_seed": records, "seeds": [r["seed"] for r in records]}


def describe_over_seeds(summary: dict[str, Any]) -> str:
    """``over 3 seeds: top-1 52.10 +- 0.40, ...``: the line the tools print for :func:`over_seeds`' summary."""
    return (
        f"over {len(summary['seeds'])} seeds: top-1 {summary['top1']:.2f} +- {summary['top1_std']:.2f}, "
        f"top-5 {summary['top5']:.2f} +- {summary['top5_std']:.2f} (mean +- sample standard deviation)"
    )


def finish_record(record: dict[str, Any], records: list[dict[str, Any]], output: str | None) -> dict[str, Any]:
    """``record`` with what :func:`over_seeds` adds for several seeds (and its line printed), written to
    ``output`` as JSON when one is given: the end of every evaluation tool."""
    summary = over_seeds(records)
    if summary:
        print(describe_over_seeds(summary))
    record.update(summary)
    if output:
        print(f"wrote {write_json(output, record)}")
    return record
