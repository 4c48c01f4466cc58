"""Numbers over seeds: a mean with its sample spread, and paired differences with a 95% interval.

A comparison of two training setups (sslvit against the official loop, a method against its random
twin) is paired by seed when both use the same seeds: the interval of the mean difference then leaves
out what the seeds share. With n seeds the interval is Student's t with n - 1 degrees of freedom
(``mean +- t(0.975, n - 1) * std / sqrt(n)``): wide for 3 seeds (t = 4.30), as it should be.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation, 95% interval of the mean, and every value (in seed order)."""

    mean: float
    std: float
    low: float
    high: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "values": list(self.values), "n": self.n}

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.std:.2f} (95% CI {self.low:.2f} to {self.high:.2f}, {self.n} seeds)"


def t_quantile_975(dof: int) -> float:
    """Student's t quantile at 0.975 with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def spread(values: Sequence[float]) -> Spread:
    """:class:`Spread` of values over seeds (one value: no spread, the interval is the value)."""
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("no values to summarise")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Spread(mean, 0.0, mean, mean, values)
    std = statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return Spread(mean, std, mean - half, mean + half, values)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Spread:
    """The spread of ``a[seed] - b[seed]`` over the seeds both have (raises when they share none)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    return spread([a[s] - b[s] for s in seeds])
