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
from sslvit.eval.knn import DEFAULT_KS, KNNClassifier, KNNResult, weighted_vote

__all__ = [
    "DEFAULT_KS",
    "FeatureCache",
    "Features",
    "KNNClassifier",
    "KNNResult",
    "dataset_features",
    "encode",
    "extract_features",
    "feature_dim",
    "frozen",
    "weighted_vote",
]
