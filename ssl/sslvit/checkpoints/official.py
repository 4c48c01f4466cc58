"""Weights of facebookresearch/mae in sslvit's names: encoder keys gain ``backbone.``, decoder keys stay."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslvit.checkpoints.io import check_state_dict, safe_load

BACKBONE_PREFIX = "backbone."
# Keys of the official MAE code that belong to the decoder; everything else is the encoder.
MAE_DECODER_KEYS = (
    "mask_token",
    "decoder_embed.",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
)


def load_official_mae(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load an official facebookresearch/mae checkpoint (``{"model": state_dict}``) into an sslvit MAE.

    Encoder keys map to ``backbone.<key>``, decoder keys keep their names. The decoder may be
    absent (the released encoder-only files); every key present must match in name and shape.
    ``state``: the file's state dict when the caller has read it already.
    """
    if state is None:
        state = safe_load(path)
        state = state.get("model", state)
    mapped = {k if k.startswith(MAE_DECODER_KEYS) else BACKBONE_PREFIX + k: v for k, v in state.items()}
    own = model.state_dict()
    has_decoder = any(k.startswith(MAE_DECODER_KEYS) for k in state)
    required = set(own) if has_decoder else {k for k in own if k.startswith(BACKBONE_PREFIX)}
    check_state_dict(own, mapped, f"official MAE checkpoint {path}", required)
    model.load_state_dict(mapped, strict=False)
