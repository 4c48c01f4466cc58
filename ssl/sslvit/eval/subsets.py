"""Which labelled images an evaluation may use: low-shot subsets, held-out parts for choosing settings, and
the mean and spread over several seeded draws.

Every subset is class-balanced and seeded: the same labels and seed give the same indices, on any
machine. Settings (a learning rate, a number of epochs) are chosen on a held-out part of the train
split, so the val split is looked at once, for the number that is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sslvit.errors import ConfigError


def _per_class(labels: Sequence[int] | torch.Tensor, seed: int) -> list[np.ndarray]:
    """The indices of each class (in class order), each shuffled by ``seed``."""
    labels = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def low_shot_indices(
    labels: Sequence[int] | torch.Tensor, fraction: float | None = None, shots: int | None = None, seed: int = 0
) -> list[int]:
    """Sorted indices of a class-balanced subset: ``shots`` images of every class, or ``fraction`` of each
    class (rounded, at least one). With neither, every index."""
    if fraction is not None and shots is not None:
        raise ConfigError("--train-fraction and --shots both given: choose one way to size the subset")
    classes = _per_class(labels, seed)
    if fraction is None and shots is None:
        return sorted(int(i) for c in classes for i in c)
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--train-fraction must be in (0, 1], got {fraction}")
    if shots is not None:
        smallest = min(len(c) for c in classes)
        if shots < 1 or shots > smallest:
            raise ConfigError(f"--shots {shots}: every class needs that many images; the smallest has {smallest}")
    chosen = [c[: shots if shots is not None else max(1, round(fraction * len(c)))] for c in classes]
    return sorted(int(i) for c in chosen for i in c)


def held_out_split(
    labels: Sequence[int] | torch.Tensor, fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(indices to train on, indices held out): ``fraction`` of every class held out (rounded up, so each
    class has at least one held-out image), the rest kept; both sorted, positions into ``labels``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be in (0, 1), got {fraction}")
    fit, held = [], []
    for c in _per_class(labels, seed):
        count = math.ceil(fraction * len(c))
        if count >= len(c):
            raise ConfigError(
                f"a class has {len(c)} training image(s): holding out {fraction:.0%} of it would leave none to train "
                "on; use more images per class, or one learning rate (--lrs) so that nothing is chosen"
            )
        held.extend(c[:count].tolist())
        fit.extend(c[count:].tolist())
    return sorted(fit), sorted(held)


def mean_and_std(records: Sequence[dict[str, Any]], keys: Sequence[str] = ("top1", "top5")) -> dict[str, float]:
    """``{key: mean, key_std: sample standard deviation}`` over several runs (std 0.0 for a single run)."""
    summary = {}
    for key in keys:
        values = [float(r[key]) for r in records]
        summary[key] = statistics.fmean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary
