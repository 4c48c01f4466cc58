"""Checkpoints: safe loading, the encoder of any sslvit checkpoint and what it records (:class:`CheckpointInfo`),
official MAE weights, export to timm."""

from sslvit.checkpoints.export import export_backbone, export_checkpoint, timm_from_export, timm_max_difference
from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.io import check_state_dict, safe_load
from sslvit.checkpoints.loading import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    LightningCheckpoint,
    load_backbone,
    read_lightning_checkpoint,
)
from sslvit.checkpoints.official import load_official_mae

__all__ = [
    "EXPORT_CONFIG",
    "EXPORT_WEIGHTS",
    "CheckpointInfo",
    "LightningCheckpoint",
    "check_state_dict",
    "export_backbone",
    "export_checkpoint",
    "load_backbone",
    "load_official_mae",
    "read_lightning_checkpoint",
    "safe_load",
    "timm_from_export",
    "timm_max_difference",
]
