"""Weighted k-nearest-neighbour classification on frozen features with Faiss (the DINO protocol).

Features are L2-normalized, so inner product is cosine similarity. Each query's ``max(ks)``
nearest bank entries are found once (exact ``IndexFlatIP`` by default, or an inverted-file index
for banks of millions); for every k the first k of them vote with weight ``exp(similarity / T)``
for their class and the class scores give top-1 and top-5.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from sslvit.errors import ConfigError

DEFAULT_KS = (10, 20, 100, 200)
ADD_CHUNK = 65536  # bank rows normalised and indexed at a time
IndexKind = Literal["flat", "ivf"]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """Faiss on ``threads`` OpenMP threads for the block, then the previous count again: torch shares
    the OpenMP runtime, so a count left behind would change the threads (and float sums) of training."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


DEFAULT_K = 20


def choose_ks(
    bank_size: int, k: int | None = None, ks: Sequence[int] | None = None
) -> tuple[list[int], int, str | None]:
    """The k values to report for a bank of ``bank_size`` features, by one rule.

    Every k that was asked for (``k``, ``ks``) must be at most the bank size: a larger one is an error,
    never quietly replaced. What was not asked for adapts: the default ks are those of
    :data:`DEFAULT_KS` that fit (or the bank size, for a bank smaller than all of them), and the default
    k is 20, or the largest reported k when 20 does not fit. Returns ``(ks, k, note)``, ``note`` saying
    what was adapted (None when nothing was).
    """
    asked = sorted({*(ks or ()), *((k,) if k is not None else ())})
    if asked and asked[0] < 1:
        raise ConfigError(f"k values must be positive, got {asked}")
    too_large = [v for v in asked if v > bank_size]
    if too_large:
        raise ConfigError(
            f"k={too_large[0]} is larger than the bank of {bank_size} training features: every k must be at most "
            f"{bank_size} (asked for {asked}); lower --k/--ks or use a larger bank"
        )
    notes = []
    if ks:
        chosen = sorted(set(ks))
    else:
        chosen = [v for v in DEFAULT_KS if v <= bank_size] or [bank_size]
        if len(chosen) < len(DEFAULT_KS):
            notes.append(f"default ks that fit the bank of {bank_size}: {chosen}")
    if k is None:
        k = DEFAULT_K if DEFAULT_K <= bank_size else max(chosen)
        if k != DEFAULT_K:
            notes.append(f"k = {DEFAULT_K} does not fit the bank of {bank_size}: the headline is k = {k}")
    return sorted({*chosen, k}), k, "; ".join(notes) or None


def weighted_vote(
    similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores [Q, C] = sum over the k neighbours of exp(sim / T) for each neighbour's class.

    similarities [Q, k], neighbour_labels [Q, k] (int64).
    """
    weights = (similarities / temperature).exp()
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Percent of rows whose label is among the k highest scores, for each k (capped at the class count)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # [Q, K]
    hits = ranked == labels[:, None]
    return [100.0 * hits[:, : min(k, scores.shape[1])].any(dim=1).double().mean().item() for k in ks]


@dataclass
class KNNResult:
    """Accuracies in percent per k, the default k, and (IVF only) recall of the exact neighbours."""

    per_k: dict[int, dict[str, float]]
    k: int
    temperature: float
    index: str
    recall: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return self.per_k[self.k]["top1"]

    @property
    def top5(self) -> float:
        return self.per_k[self.k]["top5"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "k": self.k,
            "temperature": self.temperature,
            "index": self.index,
            "recall": self.recall,
            "per_k": {str(k): v for k, v in sorted(self.per_k.items())},
            "seconds": self.timings,
        }


class KNNClassifier:
    """kNN classifier over a bank of features, evaluated for several k with one search.

    Args:
        ks: the k values reported; one search with ``max(ks)`` neighbours serves them all.
        k: the default k (its accuracies are ``top1``/``top5``); added to ``ks`` if missing.
        temperature: T of the vote weights exp(similarity / T) (DINO: 0.07).
        index: ``flat`` (exact inner product) or ``ivf`` (inverted lists, approximate; recall reported).
        nlist: IVF cells (default ``sqrt(bank size)``, at most bank size / 39 so k-means has data).
            Evaluation searches few queries per bank entry, so the k-means that builds the cells must
            stay cheap: sqrt(N) cells trained on 64 points each, rather than Faiss's 4-16 sqrt(N) for
            serving many queries.
        nprobe: IVF cells visited per query.
        batch_size: queries per search call (bounds the memory of the result arrays).
        threads: Faiss OpenMP threads (default: the cores available to this process).
        recall_queries: queries checked against exact search to report IVF recall.
    """

    def __init__(
        self,
        ks: Sequence[int] = DEFAULT_KS,
        k: int = DEFAULT_K,
        temperature: float = 0.07,
        index: IndexKind = "flat",
        nlist: int | None = None,
        nprobe: int = 32,
        batch_size: int = 8192,
        threads: int | None = None,
        recall_queries: int = 1000,
    ) -> None:
        self.ks = sorted(set(int(v) for v in (*ks, k)))
        if self.ks[0] < 1:
            raise ConfigError(f"k values must be positive, got {self.ks}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if index not in ("flat", "ivf"):
            raise ConfigError(f"index={index!r} is unknown; choose 'flat' (exact) or 'ivf' (approximate)")
        if nprobe < 1 or batch_size < 1:
            raise ConfigError(f"nprobe ({nprobe}) and batch_size ({batch_size}) must be positive")
        self.k, self.temperature, self.index_kind = int(k), float(temperature), index
        self.nlist, self.nprobe, self.batch_size = nlist, nprobe, batch_size
        self.threads = threads or available_cores()
        self.recall_queries = recall_queries
        self.index: faiss.Index | None = None

    # ---- bank ----
    @staticmethod
    def _normalized(features: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(F.normalize(features.detach().float().cpu(), dim=1).numpy())

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> KNNClassifier:
        """Index the bank: features [N, D], labels [N]."""
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            shapes = f"{tuple(features.shape)} and {tuple(labels.shape)}"
            raise ValueError(f"expected features [N, D] and labels [N], got {shapes}")
        size = features.shape[0]
        if self.ks[-1] > size:
            raise ConfigError(
                f"k={self.ks[-1]} is larger than the bank of {size} training features: every k must be at most "
                f"{size} (asked for k in {self.ks})"
            )
        self.dim, self.labels = features.shape[1], labels.detach().cpu().long()
        self.num_classes = int(self.labels.max()) + 1
        self._bank = None
        if self.index_kind == "flat":
            # Normalised and added in chunks: the index holds the one full copy of the bank (a 1M x 768
            # bank is 3 GB; normalising it whole would hold a second 3 GB copy at the peak).
            self.index = faiss.IndexFlatIP(self.dim)
            with faiss_threads(self.threads):
                for start in range(0, size, ADD_CHUNK):
                    self.index.add(self._normalized(features[start : start + ADD_CHUNK]))
            return self
        bank = self._normalized(features)
        self._bank = bank  # kept for the exact search that measures recall
        nlist = self.nlist or max(1, min(round(math.sqrt(size)), size // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(size)[: min(size, 64 * nlist)]
        with faiss_threads(self.threads):
            self.index.train(bank[np.sort(sample)])
        self.index.nprobe = min(self.nprobe, nlist)
        self._quantizer = quantizer  # the IVF index does not own it
        with faiss_threads(self.threads):
            self.index.add(bank)
        return self

    # ---- queries ----
    def search(self, queries: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [Q, D] -> (similarities [Q, k] descending, bank indices [Q, k]); k defaults to max(ks)."""
        if self.index is None:
            raise RuntimeError("call fit(features, labels) before searching")
        k = k or self.ks[-1]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {tuple(queries.shape)}")
        q = self._normalized(queries)
        sims, ids = [], []
        for start in range(0, q.shape[0], self.batch_size):
            with faiss_threads(self.threads):
                s, i = self.index.search(q[start : start + self.batch_size], k)
            sims.append(s)
            ids.append(i)
        if not sims:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
        return torch.from_numpy(np.concatenate(sims)), torch.from_numpy(np.concatenate(ids)).long()

    def scores(self, queries: torch.Tensor) -> dict[int, torch.Tensor]:
        """Class scores [Q, C] for every k in ``ks``, from one search."""
        sims, ids = self.search(queries)
        neighbour_labels = self.labels[ids.clamp(min=0)]  # IVF pads missing neighbours with -1 / -inf
        return {
            k: weighted_vote(sims[:, :k], neighbour_labels[:, :k], self.num_classes, self.temperature) for k in self.ks
        }

    def predict(self, queries: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Predicted classes [Q] with ``k`` neighbours (default: the default k)."""
        return self.scores(queries)[k or self.k].argmax(dim=1)

    def recall(self, queries: torch.Tensor, k: int | None = None) -> float:
        """Mean fraction of the exact k nearest neighbours that this index returns (1.0 for ``flat``)."""
        if self._bank is None:
            return 1.0
        k = k or self.ks[-1]
        queries = queries[: self.recall_queries]
        _, found = self.search(queries, k)
        with faiss_threads(self.threads):
            _, truth = faiss.knn(self._normalized(queries), self._bank, k, metric=faiss.METRIC_INNER_PRODUCT)
        hits = sum(len(set(a) & set(b)) for a, b in zip(found.numpy().tolist(), truth.tolist(), strict=True))
        return hits / max(1, truth.size)

    def evaluate(self, queries: torch.Tensor, labels: torch.Tensor) -> KNNResult:
        """Top-1 and top-5 accuracy (percent) of queries [Q, D] with labels [Q], for every k."""
        start = time.perf_counter()
        all_scores = self.scores(queries)
        labels = labels.detach().cpu().long()
        per_k = {}
        for k, scores in all_scores.items():
            top1, top5 = topk_accuracy(scores, labels)
            per_k[k] = {"top1": top1, "top5": top5}
        timings = {"search_and_vote": time.perf_counter() - start}
        recall = None
        if self.index_kind == "ivf":
            start = time.perf_counter()
            recall = self.recall(queries)
            timings["recall_check"] = time.perf_counter() - start
        return KNNResult(per_k, self.k, self.temperature, self.index_kind, recall, timings)
