"""Where and with what the evaluation tools encode: ``--device`` and ``--features`` resolved to a device and
to the model and pooling that compute the features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.errors import ConfigError
from sslvit.methods.loading import load_method, method_class
from sslvit.nn.backbone import VisionTransformer

BACKBONE_POOLINGS = ("cls", "mean")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu")
    return device


def resolve_features(
    features: str, checkpoint: str | Path, backbone: VisionTransformer, info: CheckpointInfo
) -> tuple[nn.Module, str, str]:
    """What ``--features`` encodes with: (the backbone or the method, the pooling to extract, its name), for the
    encoder ``backbone`` of ``checkpoint`` (its own weights, or fresh ones of its architecture).

    ``native`` is the method's :attr:`~sslvit.methods.base.SSLMethod.native_pooling`: a backbone pooling
    (MAE: cls, BEiT: mean), or a feature only the method computes (CPC: patch_grid), for which the
    whole method is loaded around ``backbone``. Outside weights: their source's own (BEiT mean, else cls).
    """
    if features != "native":
        return backbone, features, features
    if info.source != "lightning":
        return backbone, info.native_pooling, info.native_pooling
    native = method_class(info.method, str(checkpoint)).native_pooling
    if native in BACKBONE_POOLINGS:
        return backbone, native, native
    method, _ = load_method(checkpoint)
    method.backbone = backbone  # the checkpoint's encoder, or the fresh one of --random-init
    return method.eval(), "native", native
