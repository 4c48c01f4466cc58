"""One batch of images through a frozen encoder: poolings, a method's own feature, and the precision.

Poolings of a backbone: ``cls`` (CLS token after the final norm), ``mean`` (mean of the patch
tokens) and ``cls_last<n>`` (the CLS tokens of the last n blocks, each normalized, concatenated:
DINO's linear protocol uses ``cls_last4``); and ``native``, the feature a method names as its own
(:meth:`sslvit.methods.base.SSLMethod.native_features`: e.g. CPC's mean of its patch-grid latents),
for which the model passed is the method rather than its backbone.

Precision: ``auto`` encodes in bf16 autocast where the hardware has bf16 matrix units (CUDA GPUs
with bf16, CPUs with AMX) and in fp32 elsewhere (an AVX2 CPU runs bf16 products far slower than
fp32); the result is float32 either way, and the cache key records which precision made it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
from torch import nn

from sslvit.errors import ConfigError
from sslvit.nn.backbone import VisionTransformer

Precision = Literal["auto", "fp32", "bf16"]
_LAST_N = re.compile(r"cls_last(\d+)")


def bf16_matrix_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices faster than fp32 ones: CUDA with bf16, a CPU with AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and bool(amx and amx())


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16``: ``auto`` picks bf16 where :func:`bf16_matrix_units` says it is fast."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={precision!r} is unknown; choose auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if bf16_matrix_units(torch.device(device)) else "fp32"
    return precision


def last_blocks(pooling: str, depth: int) -> int:
    """How many blocks a pooling reads (1 for ``cls``/``mean``/``native``); a ConfigError for an unknown pooling."""
    if pooling in ("cls", "mean", "native"):
        return 1
    match = _LAST_N.fullmatch(pooling)
    if match and 1 <= int(match.group(1)) <= depth:
        return int(match.group(1))
    raise ConfigError(
        f"pooling={pooling!r} is not supported; use 'cls', 'mean' or 'cls_last<n>' with 1 <= n <= {depth} "
        "(the CLS tokens of the last n blocks concatenated, e.g. 'cls_last4' as in DINO)"
    )


def backbone_of(model: nn.Module) -> VisionTransformer:
    """The ViT of a model: the model itself, or a method's ``backbone``."""
    return getattr(model, "backbone", model)


def feature_dim(model: nn.Module, pooling: str) -> int:
    """Width of the features: ``D``, ``n * D`` for ``cls_last<n>``, a method's ``native_feature_dim`` for ``native``."""
    backbone = backbone_of(model)
    n = last_blocks(pooling, len(backbone.blocks))
    if pooling == "native":
        if not hasattr(model, "native_features"):
            raise ConfigError(
                f"pooling='native' needs a method (it names its own features); got a {type(model).__name__}: use "
                "'cls', 'mean' or 'cls_last<n>' for a bare backbone"
            )
        return model.native_feature_dim
    return backbone.embed_dim * (n if pooling.startswith("cls_last") else 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """No gradients and every submodule in eval mode (dropout, drop-path, norms); modes restored on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def encode(model: nn.Module, images: torch.Tensor, pooling: str = "cls", precision: Precision = "auto") -> torch.Tensor:
    """images [N, C, H, W] -> features [N, F] float32 of the frozen model (see :func:`feature_dim`).

    ``model``: a backbone, or a method (its backbone is pooled; ``native`` asks the method).
    ``precision``: see :func:`resolve_precision` (``auto``: bf16 autocast only on bf16 matrix units).
    """
    feature_dim(model, pooling)  # validates the pooling for this model
    backbone = backbone_of(model)
    n = last_blocks(pooling, len(backbone.blocks))
    bf16 = resolve_precision(precision, images.device) == "bf16"
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with frozen(model), autocast:
        if pooling == "native":
            features = model.native_features(images)
        elif pooling.startswith("cls_last"):
            features = torch.cat([tokens[:, 0] for tokens in backbone.get_intermediate_layers(images, n)], dim=-1)
        else:
            features = backbone.pool(backbone.forward_features(images), pooling)
    return features.float()
