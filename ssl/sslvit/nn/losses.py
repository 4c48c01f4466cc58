"""Losses shared by the methods: masked pixel regression, masked token classification, InfoNCE."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalize each patch vector [..., P] by its own mean and (unbiased) variance (MAE norm-pix)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only.

    pred, target: [N, L, P]; mask: [N, L] with 1 = masked. The error is averaged over the P
    values of a patch, then over the masked patches; visible patches contribute nothing.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [N, L]
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions only. logits: [N, L, V]; targets: [N, L] ids; mask: [N, L]."""
    selected = mask.bool()
    return F.cross_entropy(logits[selected].float(), targets[selected])


class InfoNCE(NamedTuple):
    """Result of :func:`info_nce`."""

    loss: torch.Tensor  # scalar, mean over queries
    accuracy: torch.Tensor  # scalar, detached: fraction of queries whose positive scores strictly highest


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positive_index: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    temperature: float = 1.0,
    normalize: bool = False,
) -> InfoNCE:
    """InfoNCE (van den Oord et al., 2018): pick out each query's positive key among candidates.

    With scores ``s(q, k) = q . k / temperature`` (cosine similarity when ``normalize``), query
    ``q_m`` with positive ``k+_m`` and candidate set ``C_m`` (the positive and its negatives):

        loss = -1/M sum_m log( exp s(q_m, k+_m) / sum_{k in C_m} exp s(q_m, k) )

    i.e. the cross-entropy of a softmax over the candidates; uninformative (equal) scores give
    ``log |C_m|``. Candidates are given in one of two ways:

    - in-batch (``negatives`` is None): every query's candidates are all rows of ``keys`` [B, D];
      the positive of query m is ``keys[positive_index[m]]`` and every other key is a negative.
      ``positive_index`` [M] defaults to ``arange(M)`` (row-aligned pairs, needs M <= B).
    - explicit: ``keys`` [M, D] holds the positive of each query row by row and ``negatives``
      is [K, D] (shared by all queries) or [M, K, D] (one set per query).

    Scores are computed in float32 with autocast off: in bf16, logits of unnormalized features
    of norm ~sqrt(D) would be off by about one unit.

    Args:
        queries: [M, D] predictions (or anchors).
        keys: [B, D] candidate bank (in-batch) or [M, D] positives (explicit).
        positive_index: [M] long, the row of ``keys`` holding each query's positive (in-batch only).
        negatives: [K, D] or [M, K, D] (explicit only).
        temperature: divides the scores; must be positive.
        normalize: L2-normalize queries, keys and negatives first (cosine similarity).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries [M, D] and keys [B, D] must share the width D, got {list(queries.shape)}, {list(keys.shape)}"
        )
    with torch.autocast(queries.device.type, enabled=False):
        logits, target = _candidate_logits(queries, keys, positive_index, negatives, normalize)
        logits = logits / temperature  # [M, candidates]
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            positive = logits.gather(1, target[:, None])  # [M, 1]
            best_other = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1, keepdim=True)
            accuracy = (positive > best_other).float().mean()  # ties count as misses
    return InfoNCE(loss, accuracy)


def _candidate_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positive_index: torch.Tensor | None,
    negatives: torch.Tensor | None,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scores of every query against its candidates [M, C] and the column of each positive [M]."""
    m = queries.shape[0]
    norm = (lambda x: F.normalize(x.float(), dim=-1)) if normalize else (lambda x: x.float())
    q, k = norm(queries), norm(keys)
    if negatives is None:  # in-batch: every key is a candidate of every query
        if positive_index is None:
            if m > k.shape[0]:
                raise ValueError(f"{m} queries but only {k.shape[0]} keys: pass positive_index")
            positive_index = torch.arange(m, device=q.device)
        if positive_index.shape != (m,):
            raise ValueError(f"positive_index must be [M] = [{m}], got {list(positive_index.shape)}")
        return q @ k.T, positive_index
    if positive_index is not None:
        raise ValueError("pass either positive_index (in-batch) or negatives (explicit), not both")
    if k.shape[0] != m:
        raise ValueError(f"with explicit negatives, keys are the M={m} positives row by row, got {k.shape[0]} rows")
    n = norm(negatives)
    negative_scores = q @ n.T if n.ndim == 2 else torch.einsum("md,mkd->mk", q, n)  # [M, K]
    logits = torch.cat([(q * k).sum(-1, keepdim=True), negative_scores], dim=1)  # the positive in column 0
    return logits, torch.zeros(m, dtype=torch.long, device=q.device)
