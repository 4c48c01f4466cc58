"""How a probe's settings are chosen: on a held-out part of the train split, then val once.

Both linear-probe paths (:func:`sslvit.eval.linear_probe` on cached features and
:func:`sslvit.eval.linear_protocol.linear_probe_protocol` on augmented images) train their heads
through one function and leave the choice to :func:`choose_and_report`; the result says which rule
chose (``selection``) and where every head was scored (``per_lr_on``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sslvit.errors import ConfigError
from sslvit.eval.features import Features
from sslvit.eval.subsets import held_out_split

Selection = Literal["held_out", "val"]
SELECTION_NOTES = {
    "held_out": "learning rate chosen on {held} held-out train images, then retrained on all {train}",
    "val": "learning rate chosen on val: optimistic, as in papers that report the best of their sweep",
    "single": "one learning rate, nothing chosen",
}


@dataclass
class LinearProbeResult:
    """The val accuracy (percent) that is reported, and how the learning rate was chosen.

    ``per_lr``: every head's result on the split that chose (``per_lr_on``: the held-out part of
    train, or val); ``val``: with held-out selection, the chosen learning rate retrained on the whole
    train split and evaluated on val, the one time val is looked at.
    """

    per_lr: dict[float, dict[str, float]]
    lr: float
    settings: dict[str, Any]
    seconds: float
    selection: str = "val"  # held_out, val, or single (one learning rate)
    val: dict[str, float] | None = None
    held_out: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return (self.val or self.per_lr[self.lr])["top1"]

    @property
    def top5(self) -> float:
        return (self.val or self.per_lr[self.lr])["top5"]

    @property
    def note(self) -> str:
        held, train = self.held_out.get("num_images"), self.settings.get("num_train")
        return SELECTION_NOTES[self.selection].format(held=held, train=train)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "base_lr": self.lr,
            "selection": self.selection,
            "selection_note": self.note,
            **({"held_out": self.held_out} if self.held_out else {}),
            **self.settings,
            "per_lr": {f"{lr:g}": v for lr, v in sorted(self.per_lr.items())},
            "per_lr_on": "held_out" if self.selection == "held_out" else "val",
            "seconds": self.seconds,
        }


def best_lr(per_lr: dict[float, dict[str, float]]) -> float:
    """The learning rate with the best top-1; ties go to the smaller one."""
    return max(per_lr, key=lambda lr: (per_lr[lr]["top1"], -lr))


# (train positions or None for all, evaluation features, base lrs) -> {lr: {"top1", "top5", "train_loss"}}
TrainHeads = Callable[[Sequence[int] | None, Features, Sequence[float]], dict[float, dict[str, float]]]


def choose_and_report(
    train_heads: TrainHeads,
    held_features: Callable[[Sequence[int]], Features],
    train_labels: torch.Tensor,
    val: Features,
    base_lrs: Sequence[float],
    selection: Selection = "held_out",
    held_out_fraction: float = 0.1,
    seed: int = 0,
) -> LinearProbeResult:
    """The selection rule of both probe paths; the caller adds ``settings`` and ``seconds`` to the result.

    ``held_out``: heads for every learning rate train on the train split minus a class-balanced,
    seeded ``held_out_fraction`` of it and are scored on that part; the chosen learning rate is
    retrained on the whole train split and evaluated on val once. ``val``: the heads train on the
    whole train split and the best on val is reported (optimistic). One learning rate: nothing is chosen.
    """
    if selection not in ("held_out", "val"):
        raise ConfigError(f"selection={selection!r} is unknown; choose 'held_out' or 'val'")
    if len(base_lrs) == 1 or selection == "val":
        per_lr = train_heads(None, val, base_lrs)
        chosen_by = "single" if len(base_lrs) == 1 else "val"
        return LinearProbeResult(per_lr, best_lr(per_lr), settings={}, seconds=0.0, selection=chosen_by)
    fit, held = held_out_split(train_labels, held_out_fraction, seed)
    per_lr = train_heads(fit, held_features(held), base_lrs)
    chosen = best_lr(per_lr)
    return LinearProbeResult(
        per_lr,
        chosen,
        settings={},
        seconds=0.0,
        selection="held_out",
        val=train_heads(None, val, [chosen])[chosen],
        held_out={"fraction": held_out_fraction, "num_images": len(held), "seed": seed, **per_lr[chosen]},
    )
