"""Figures of what a model learned: MAE reconstructions, feature maps, training curves.

Every function returns a matplotlib ``Figure`` built without pyplot; :func:`save_png` writes it.
"""

from sslvit.viz.features import FeatureMaps, attention_overlay, encode_with_attention, features_figure, pca_rgb
from sslvit.viz.figure import image_grid, save_png
from sslvit.viz.plots import MetricSeries, metrics_figure, read_metrics
from sslvit.viz.reconstruction import (
    Reconstruction,
    ReconstructionLogger,
    load_mae,
    reconstruct,
    reconstruction_figure,
    unnormalize_patches,
)

__all__ = [
    "FeatureMaps",
    "MetricSeries",
    "Reconstruction",
    "ReconstructionLogger",
    "attention_overlay",
    "encode_with_attention",
    "features_figure",
    "image_grid",
    "load_mae",
    "metrics_figure",
    "pca_rgb",
    "read_metrics",
    "reconstruct",
    "reconstruction_figure",
    "save_png",
    "unnormalize_patches",
]
