"""Evaluation: frozen features (with caching), Faiss kNN, linear probe, online kNN; end-to-end fine-tuning."""

from sslvit.eval.features import (
    FeatureCache,
    Features,
    dataset_features,
    encode,
    extract_features,
    feature_dim,
    frozen,
)
from sslvit.eval.finetune import FineTune
from sslvit.eval.knn import DEFAULT_KS, KNNClassifier, KNNResult, weighted_vote
from sslvit.eval.linear import (
    DEFAULT_BASE_LRS,
    LinearProbeResult,
    ParallelLinearHeads,
    linear_probe,
    linear_probe_protocol,
)
from sslvit.eval.online import OnlineKNN

__all__ = [
    "DEFAULT_BASE_LRS",
    "DEFAULT_KS",
    "FeatureCache",
    "Features",
    "FineTune",
    "KNNClassifier",
    "KNNResult",
    "LinearProbeResult",
    "OnlineKNN",
    "ParallelLinearHeads",
    "dataset_features",
    "encode",
    "extract_features",
    "feature_dim",
    "frozen",
    "linear_probe",
    "linear_probe_protocol",
    "weighted_vote",
]
