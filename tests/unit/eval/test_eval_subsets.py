"""Low-shot subsets, held-out parts and the spread over seeds: balanced, seeded, disjoint."""

from collections import Counter

import pytest
import torch

from sslvit.errors import ConfigError
from sslvit.eval.subsets import held_out_split, low_shot_indices, mean_and_std

LABELS = [0] * 50 + [1] * 30 + [2] * 20  # unbalanced on purpose


def counts(indices):
    return Counter(LABELS[i] for i in indices)


def test_shots_and_fractions_are_class_balanced_and_seeded():
    five = low_shot_indices(LABELS, shots=5, seed=0)
    assert counts(five) == {0: 5, 1: 5, 2: 5} and five == sorted(five)
    assert low_shot_indices(torch.tensor(LABELS), shots=5, seed=0) == five, "tensor labels: the same draw"
    assert low_shot_indices(LABELS, shots=5, seed=1) != five
    tenth = low_shot_indices(LABELS, fraction=0.1, seed=0)
    assert counts(tenth) == {0: 5, 1: 3, 2: 2}, "the same fraction of every class"
    assert counts(low_shot_indices(LABELS, fraction=0.01)) == {0: 1, 1: 1, 2: 1}, "at least one per class"
    assert low_shot_indices(LABELS) == list(range(100))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(shots=21), "--shots 21: every class needs that many images; the smallest has 20"),
        (dict(fraction=1.5), "--train-fraction must be in"),
        (dict(fraction=0.1, shots=2), "choose one"),
    ],
)
def test_impossible_subsets_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        low_shot_indices(LABELS, **kwargs)


def test_held_out_split_is_disjoint_balanced_and_seeded():
    fit, held = held_out_split(LABELS, 0.1, seed=0)
    assert sorted(fit + held) == list(range(100)) and not set(fit) & set(held)
    assert counts(held) == {0: 5, 1: 3, 2: 2}
    assert held_out_split(LABELS, 0.1, seed=0) == (fit, held) and held_out_split(LABELS, 0.1, seed=1)[1] != held
    one_each = [0, 0, 1, 1, 2]
    with pytest.raises(ConfigError, match="a class has 1 training image"):
        held_out_split(one_each, 0.1)


def test_mean_and_sample_std():
    summary = mean_and_std([{"top1": 50.0, "top5": 90.0}, {"top1": 54.0, "top5": 90.0}])
    assert summary == {"top1": 52.0, "top1_std": pytest.approx(2.8284271), "top5": 90.0, "top5_std": 0.0}
    assert mean_and_std([{"top1": 1.0, "top5": 2.0}])["top1_std"] == 0.0
