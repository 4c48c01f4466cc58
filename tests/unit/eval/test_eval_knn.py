"""Faiss kNN against a brute-force torch reference and DINO's vote formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslvit.errors import ConfigError
from sslvit.eval.knn import KNNClassifier, choose_ks


def reference_scores(bank, bank_labels, queries, k, temperature, num_classes):
    """Brute force: cosine similarities, top-k, class score = sum of exp(sim / T) over the neighbours."""
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    top, idx = sims.topk(k, dim=1)
    scores = torch.zeros(len(queries), num_classes)
    for q in range(len(queries)):
        for s, i in zip(top[q].tolist(), idx[q].tolist(), strict=True):
            scores[q, bank_labels[i]] += math.exp(s / temperature)
    return scores


def clusters(n, classes=5, dim=32, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    labels = torch.randint(0, classes, (n,), generator=g)
    return centers[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_separated_clusters_are_classified_and_equal_brute_force():
    bank, bank_labels = clusters(600)
    queries, labels = clusters(150, seed=1)
    knn = KNNClassifier(ks=(5, 20, 50), k=20).fit(bank, bank_labels)
    result = knn.evaluate(queries, labels)
    assert result.top1 == 100.0 and result.k == 20 and set(result.per_k) == {5, 20, 50}
    for k, scores in knn.scores(queries).items():
        expected = reference_scores(bank, bank_labels, queries, k, 0.07, 5)
        assert torch.equal(scores.argmax(1), expected.argmax(1))
        assert torch.allclose(scores, expected, rtol=1e-4)


def test_vote_is_weighted_by_exp_similarity_over_temperature():
    # One neighbour of class 0 right next to the query, two of class 1 further away: a majority
    # vote says 1, DINO's weighted vote says 0.
    angle = torch.tensor([0.0, 0.6, -0.7, 2.5])
    bank = torch.stack([angle.cos(), angle.sin()], dim=1)
    bank_labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.05]])
    knn = KNNClassifier(ks=(3,), k=3, temperature=0.1).fit(bank, bank_labels)
    sims = F.normalize(query, dim=1) @ bank.T
    expected = torch.zeros(1, 3)
    for i in sims[0].argsort(descending=True)[:3].tolist():
        expected[0, bank_labels[i]] += math.exp(sims[0, i].item() / 0.1)
    assert torch.allclose(knn.scores(query)[3], expected, rtol=1e-5)
    assert knn.predict(query).item() == 0
    assert KNNClassifier(ks=(3,), k=3, temperature=100.0).fit(bank, bank_labels).predict(query).item() == 1


def test_top5_at_least_top1_and_one_search_serves_every_k():
    bank, bank_labels = clusters(800, classes=10, spread=2.0)
    queries, labels = clusters(200, classes=10, spread=2.0, seed=1)
    result = KNNClassifier(ks=(1, 10, 20, 100)).fit(bank, bank_labels).evaluate(queries, labels)
    assert 20 < result.top1 < 100, "a test that is neither trivial nor hopeless"
    for k, acc in result.per_k.items():
        assert acc["top5"] >= acc["top1"]
        alone = KNNClassifier(ks=(k,), k=k).fit(bank, bank_labels).evaluate(queries, labels)
        assert alone.per_k[k] == acc


def test_ivf_reports_recall_against_exact_search():
    bank, bank_labels = clusters(4000, classes=20, dim=16, spread=1.0)
    queries, labels = clusters(300, classes=20, dim=16, spread=1.0, seed=1)
    exact = KNNClassifier().fit(bank, bank_labels).evaluate(queries, labels)
    assert exact.recall is None
    coarse = KNNClassifier(index="ivf", nprobe=1).fit(bank, bank_labels)
    assert coarse.index.nlist == 63  # sqrt(4000)
    partial = coarse.evaluate(queries, labels)
    # Recall of the 200 exact neighbours, computed by brute force.
    _, found = coarse.search(queries)
    truth = (F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T).topk(200, dim=1).indices
    expected = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True)) / truth.numel()
    assert 0.0 < partial.recall < 1.0 and partial.recall == pytest.approx(expected, abs=1e-3)
    finer = KNNClassifier(index="ivf", nprobe=16).fit(bank, bank_labels).evaluate(queries, labels)
    assert finer.recall > partial.recall
    everything = KNNClassifier(index="ivf", nprobe=10_000).fit(bank, bank_labels).evaluate(queries, labels)
    assert everything.recall == 1.0 and everything.per_k == exact.per_k


def test_faiss_leaves_torchs_thread_count_alone():
    """Faiss and torch share the OpenMP runtime: a thread count left behind changed training after online kNN."""
    threads = torch.get_num_threads()
    bank, bank_labels = clusters(500, classes=5, dim=8, spread=1.0)
    for index in ("flat", "ivf"):
        KNNClassifier(index=index, threads=threads + 1).fit(bank, bank_labels).evaluate(bank[:50], bank_labels[:50])
        assert torch.get_num_threads() == threads


def test_bad_settings_are_clear_errors():
    bank, bank_labels = clusters(50)
    with pytest.raises(ConfigError, match=r"k=200 is larger than the bank of 50 training features"):
        KNNClassifier().fit(bank, bank_labels)
    with pytest.raises(ConfigError, match="index='hnsw' is unknown"):
        KNNClassifier(index="hnsw")
    with pytest.raises(ConfigError, match="temperature must be positive"):
        KNNClassifier(temperature=0)
    with pytest.raises(ValueError, match=r"queries must be \[Q, 32\]"):
        KNNClassifier(ks=(5,), k=5).fit(bank, bank_labels).search(torch.randn(3, 8))


def test_a_bank_indexed_in_chunks_searches_like_one_indexed_whole(monkeypatch):
    import sslvit.eval.knn as knn_module

    g = torch.Generator().manual_seed(0)
    bank, labels, queries = torch.randn(50, 8, generator=g), torch.randint(0, 3, (50,), generator=g), torch.randn(9, 8)
    whole = KNNClassifier(ks=(5,), k=5).fit(bank, labels).search(queries)
    monkeypatch.setattr(knn_module, "ADD_CHUNK", 7)  # 8 chunks, the last of 1 row
    chunked = KNNClassifier(ks=(5,), k=5).fit(bank, labels)
    assert chunked.index.ntotal == 50
    sims, ids = chunked.search(queries)
    assert torch.equal(ids, whole[1]) and torch.allclose(sims, whole[0])


def test_one_rule_for_k_asked_values_must_fit_the_bank_defaults_adapt():
    """Regression: --k 150 with a bank of 120 reported k = 100 as the headline with exit status 0."""
    with pytest.raises(ConfigError, match="k=150 is larger than the bank of 120 training features"):
        choose_ks(120, k=150)
    with pytest.raises(ConfigError, match="k=500 is larger than the bank of 120"):
        choose_ks(120, ks=[10, 500])
    assert choose_ks(1000) == ([10, 20, 100, 200], 20, None)
    assert choose_ks(120, k=20, ks=[5]) == ([5, 20], 20, None)
    ks, k, note = choose_ks(15)  # a low-shot bank: the defaults that fit, and the largest as the headline
    assert (ks, k) == ([10], 10) and "k = 20 does not fit the bank of 15: the headline is k = 10" in note
    assert choose_ks(4)[:2] == ([4], 4)
