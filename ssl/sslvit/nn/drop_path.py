"""Stochastic depth whose per-sample draws follow the samples' keys, like masks and augmentations.

timm's ``DropPath`` draws from the global generator. Lightning seeds every rank with the same seed, so
under DDP every GPU drew the *same* drop pattern for its different images, and one process never
equalled two. Here the caller hands the backbone one random key per batch row (``row_keys`` [R], e.g.
the samples' keys from :mod:`sslvit.seeding`); row r's keep/drop decision in every residual branch is
a uniform number drawn from a generator seeded with that key: independent of rank, batch, workers and
resume, and recomputed identically under activation checkpointing. Without keys (a backbone called
directly in training mode) it falls back to the global generator, as timm does.

Shapes: x [R, T, D]; draws [R, branches] (two branches per block: attention and MLP).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sslvit.seeding import keyed_rand

DROP_PATH_SALT = 0x4450_4154  # 'DPAT': the stream of keyed numbers used for stochastic depth


class KeyedDropPath(nn.Module):
    """Drop a residual branch for a whole row with probability ``drop_prob`` (scaled by 1 / keep when kept).

    Holds no parameters: a block's state dict is the same as with timm's ``DropPath``.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.draws: torch.Tensor | None = None  # [R] uniforms for the current call, set by :func:`drawn_from`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        if self.draws is None:
            mask = x.new_empty(shape).bernoulli_(keep)
        else:
            if self.draws.shape[0] != x.shape[0]:
                raise ValueError(f"{self.draws.shape[0]} row keys for a batch of {x.shape[0]} rows")
            mask = (self.draws < keep).to(x.dtype).view(shape)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def drop_path_draws(row_keys: torch.Tensor, branches: int, device: torch.device) -> torch.Tensor:
    """Uniforms [R, branches]: row r's numbers from a generator seeded with ``row_keys[r]`` (salted)."""
    return keyed_rand(row_keys, branches, salt=DROP_PATH_SALT, device=device)


@contextmanager
def drawn_from(modules: list[KeyedDropPath], draws: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, module i takes its decisions from ``draws[:, i]`` (None: the global generator)."""
    for i, module in enumerate(modules):
        module.draws = None if draws is None else draws[:, i]
    try:
        yield
    finally:
        for module in modules:
            module.draws = None
