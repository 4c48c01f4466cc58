"""Evaluation of frozen backbones: feature extraction with caching, Faiss kNN, linear probe, online kNN and
linear probe, the label-free RankMe (offline and online), low-shot subsets and held-out selection; end-to-end
fine-tuning."""

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
from sslvit.eval.linear import DEFAULT_BASE_LRS, ParallelLinearHeads, ProbeSettings, linear_probe
from sslvit.eval.linear_protocol import linear_probe_protocol
from sslvit.eval.online import OnlineEvaluation, OnlineKNN
from sslvit.eval.online_linear import OnlineLinearProbe
from sslvit.eval.rankme import OnlineRankMe, effective_rank
from sslvit.eval.selection import LinearProbeResult
from sslvit.eval.subsets import held_out_split, low_shot_indices, mean_and_std

__all__ = [
    "DEFAULT_BASE_LRS",
    "DEFAULT_KS",
    "FeatureCache",
    "Features",
    "FineTune",
    "KNNClassifier",
    "KNNResult",
    "LinearProbeResult",
    "OnlineEvaluation",
    "OnlineKNN",
    "OnlineLinearProbe",
    "OnlineRankMe",
    "ParallelLinearHeads",
    "ProbeSettings",
    "dataset_features",
    "effective_rank",
    "encode",
    "extract_features",
    "feature_dim",
    "frozen",
    "held_out_split",
    "linear_probe",
    "linear_probe_protocol",
    "low_shot_indices",
    "mean_and_std",
    "weighted_vote",
]
