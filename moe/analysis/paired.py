"""Paired comparisons over seeds: is arm A really better than arm B?

Two arms run with the same seeds share, seed by seed, the data order (moe/batches.py depends only on
``trainer.seed``) and the initial draw of every parameter they have in common, so the per-seed
difference d_s = m_A(s) − m_B(s) cancels much of the seed noise that the two arms' own spreads contain.
Over n seeds the estimate is the mean difference d̄ with the two-sided Student-t interval

    d̄ ± t_{1−α/2, n−1} · s_d / √n,     s_d = sample std of the d_s,

and a difference is *distinguishable from zero* when its interval excludes 0. The t quantile comes
from the regularised incomplete beta function (no scipy needed):

    P(T ≤ t) = 1 − ½ I_{ν/(ν+t²)}(ν/2, ½)    for t ≥ 0, ν degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean; use symmetry
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - math.log(a)
                     + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def student_t_cdf(t: float, df: int) -> float:
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value t_{(1+confidence)/2, df}, by bisection on the CDF."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 seeds (df >= 1), got df={df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    target, low, high = (1.0 + confidence) / 2.0, 0.0, 1.0
    while student_t_cdf(high, df) < target:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if student_t_cdf(mid, df) < target else (low, mid)
    return (low + high) / 2.0


@dataclass(frozen=True)
class PairedDifference:
    """Mean of arm − reference over paired seeds, with its two-sided t confidence interval."""

    mean: float
    std: float  # sample std of the per-seed differences
    seeds: int
    low: float
    high: float
    confidence: float

    @property
    def distinguishable(self) -> bool:
        """True when the interval excludes zero."""
        return self.low > 0.0 or self.high < 0.0


def check_pairing(seeds_by_arm: Mapping[str, list[int]], reference: str) -> None:
    """Every arm must hold exactly the reference arm's seeds, each once, and at least two of them
    (a ValueError names the arm and the seeds that differ)."""
    if reference not in seeds_by_arm:
        raise ValueError(f"--reference {reference!r} is not an arm of these runs; arms: {sorted(seeds_by_arm)}")
    expected = sorted(seeds_by_arm[reference])
    for arm, seeds in seeds_by_arm.items():
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"arm {arm!r} has seed(s) {sorted(seeds)}: each seed may appear once")
        if sorted(seeds) != expected:
            raise ValueError(f"arm {arm!r} has seeds {sorted(seeds)} but the reference {reference!r} has "
                             f"{expected}: paired comparisons need the same seeds in every arm")
    if len(expected) < 2:
        raise ValueError(f"the reference {reference!r} has seeds {expected}: a paired interval needs >= 2")


def paired_difference(arm: Mapping[int, float], reference: Mapping[int, float], *,
                      confidence: float = 0.95) -> PairedDifference:
    """``arm`` and ``reference`` map seed → metric; they must hold the same ≥ 2 seeds."""
    if set(arm) != set(reference):
        raise ValueError(f"paired seeds differ: arm has seeds {sorted(arm)}, reference has {sorted(reference)}")
    seeds = sorted(arm)
    if len(seeds) < 2:
        raise ValueError(f"a paired interval needs at least 2 seeds, got {seeds}")
    diffs = [arm[s] - reference[s] for s in seeds]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_critical(len(diffs) - 1, confidence) * std / math.sqrt(len(diffs))
    return PairedDifference(mean=mean, std=std, seeds=len(diffs), low=mean - half, high=mean + half,
                            confidence=confidence)


def pooled_std(groups: list[list[float]]) -> float:
    """√(Σ_g (n_g − 1)·s_g² / Σ_g (n_g − 1)): the seed std of several arms pooled."""
    dof = sum(len(g) - 1 for g in groups)
    if dof < 1:
        raise ValueError("a pooled std needs an arm with at least 2 seeds")
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1) / dof)
