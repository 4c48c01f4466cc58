"""InfoNCE (sslvit.nn.losses.info_nce) against hand-written references."""

import math

import pytest
import torch

from sslvit.nn.losses import info_nce


def reference(queries, candidates_per_query, positive_column, temperature=1.0):
    """-mean log softmax of the positive, one query at a time, with Python loops."""
    total = 0.0
    for q, candidates, pos in zip(queries.tolist(), candidates_per_query, positive_column, strict=True):
        scores = [sum(a * b for a, b in zip(q, c, strict=True)) / temperature for c in candidates]
        top = max(scores)
        log_norm = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_norm - scores[pos]
    return total / len(queries)


def test_in_batch_with_positive_index_matches_reference():
    queries, keys = torch.randn(5, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    index = torch.tensor([3, 0, 6, 3, 1])
    out = info_nce(queries, keys, positive_index=index, temperature=0.5)
    expected = reference(queries, [keys.tolist()] * 5, index.tolist(), temperature=0.5)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_in_batch_default_pairs_rows():
    queries, keys = torch.randn(4, 3), torch.randn(4, 3)
    out = info_nce(queries, keys)
    assert out.loss.item() == pytest.approx(reference(queries, [keys.tolist()] * 4, [0, 1, 2, 3]), rel=1e-5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(queries @ keys.T, torch.arange(4)))


def test_explicit_shared_and_per_query_negatives_match_reference():
    queries, positives = torch.randn(3, 4), torch.randn(3, 4)
    shared = torch.randn(5, 4)
    out = info_nce(queries, positives, negatives=shared, temperature=0.2)
    candidates = [[positives[m].tolist(), *shared.tolist()] for m in range(3)]
    assert out.loss.item() == pytest.approx(reference(queries, candidates, [0, 0, 0], 0.2), rel=1e-5)
    per_query = torch.randn(3, 2, 4)
    out = info_nce(queries, positives, negatives=per_query)
    candidates = [[positives[m].tolist(), *per_query[m].tolist()] for m in range(3)]
    assert out.loss.item() == pytest.approx(reference(queries, candidates, [0, 0, 0]), rel=1e-5)


def test_normalize_uses_cosine_similarity():
    queries, keys = torch.randn(3, 5), torch.randn(6, 5)
    index = torch.tensor([5, 2, 2])
    scaled = info_nce(queries * 7.0, keys * 0.1, positive_index=index, normalize=True, temperature=0.1)
    unit = torch.nn.functional.normalize
    expected = reference(unit(queries, dim=-1), [unit(keys, dim=-1).tolist()] * 3, [5, 2, 2], 0.1)
    assert scaled.loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_uninformative_scores_give_log_n(temperature):
    keys = torch.randn(10, 8)
    out = info_nce(torch.zeros(6, 8), keys, positive_index=torch.randint(10, (6,)), temperature=temperature)
    assert out.loss.item() == pytest.approx(math.log(10), rel=1e-6)
    assert out.accuracy.item() == 0.0, "ties are not a success"
    explicit = info_nce(torch.zeros(6, 8), torch.randn(6, 8), negatives=torch.randn(6, 15, 8))
    assert explicit.loss.item() == pytest.approx(math.log(16), rel=1e-6)
    assert explicit.accuracy.item() == 0.0


def test_accuracy_counts_queries_whose_positive_scores_highest():
    keys = torch.eye(4)
    queries = torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 3.0], [0, 0, 5.0, 0]])  # positive of query 1 loses
    out = info_nce(queries, keys, positive_index=torch.tensor([0, 1, 2]))
    assert out.accuracy.item() == pytest.approx(2 / 3)
    assert not out.accuracy.requires_grad


def test_gradient_matches_autograd_of_reference_formula():
    queries = torch.randn(4, 3, requires_grad=True)
    keys = torch.randn(6, 3, requires_grad=True)
    index = torch.tensor([1, 4, 4, 0])
    info_nce(queries, keys, positive_index=index, temperature=0.3).loss.backward()
    q2, k2 = queries.detach().clone().requires_grad_(), keys.detach().clone().requires_grad_()
    logits = q2 @ k2.T / 0.3
    (torch.logsumexp(logits, 1) - logits[torch.arange(4), index]).mean().backward()
    assert torch.allclose(queries.grad, q2.grad, atol=1e-6) and torch.allclose(keys.grad, k2.grad, atol=1e-6)


def test_scores_stay_float32_under_bf16_autocast():
    queries, keys = torch.randn(8, 64) * 4, torch.randn(20, 64) * 4
    index = torch.randint(20, (8,))
    exact = info_nce(queries, keys, positive_index=index).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = info_nce(queries, keys, positive_index=index).loss
    assert under_autocast.dtype == torch.float32 and torch.allclose(under_autocast, exact)


def test_misuse_is_a_clear_error():
    q, k = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="either positive_index"):
        info_nce(q, k, positive_index=torch.arange(3), negatives=torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, temperature=0.0)
    with pytest.raises(ValueError, match="share the width"):
        info_nce(q, torch.randn(3, 5))
    with pytest.raises(ValueError, match="pass positive_index"):
        info_nce(torch.randn(5, 4), k)
