"""Evaluation of frozen backbones: feature extraction with caching, Faiss kNN, linear probe, online kNN."""

from sslvit.eval.features import (
    FeatureCache,
    Features,
    dataset_features,
    encode,
    extract_features,
    feature_dim,
    frozen,
)

__all__ = [
    "FeatureCache",
    "Features",
    "dataset_features",
    "encode",
    "extract_features",
    "feature_dim",
    "frozen",
]
