"""Spread over seeds and paired differences: the numbers a table of several seeds reports."""

import math

import pytest

from sslvit.eval.seeds import paired_difference, spread


def test_spread_is_the_mean_sample_std_and_t_interval():
    s = spread([35.0, 36.0, 37.0])
    assert (s.mean, s.std, s.n) == (36.0, 1.0, 3)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2)
    assert s.low == pytest.approx(36.0 - half) and s.high == pytest.approx(36.0 + half)
    assert "36.00 ± 1.00 (95% CI 33.52 to 38.48, 3 seeds)" == str(s)
    one = spread([40.0])
    assert (one.mean, one.std, one.low, one.high) == (40.0, 0.0, 40.0, 40.0) and "1 seed" in str(one)
    with pytest.raises(ValueError):
        spread([])


def test_a_paired_difference_removes_what_the_seeds_share():
    """Each seed moves both setups by the same amount: unpaired, the spread hides a constant +1 difference;
    paired, the interval is exactly +1."""
    sslvit = {0: 30.0, 1: 35.0, 2: 40.0}
    official = {0: 29.0, 1: 34.0, 2: 39.0, 3: 50.0}  # seed 3 has no partner: left out
    diff = paired_difference(sslvit, official)
    assert diff.values == (1.0, 1.0, 1.0) and diff.low == diff.high == 1.0
    assert spread(list(sslvit.values())).std == 5.0
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})
