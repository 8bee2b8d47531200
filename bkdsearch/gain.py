"""How much a confirmed winner gains over the baseline, and how sure that is: the mean
difference of two configurations' accuracies over seeds with its 95% t-interval (paired by
seed when both ran the same seeds, Welch otherwise), and the words a person reads.

Plain standard library (no scipy): Student's t quantile comes from the regularized incomplete
beta function, so Welch's non-integer degrees of freedom are exact too."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
"""The level of every interval shown."""


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes'
    betacf), converging for x < (a + 1) / (a + b + 2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Return the regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Return P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (not necessarily an
    integer)."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Return the ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g.
    ``t_quantile(0.975, 2)`` = 4.3027), by bisection on :func:`t_cdf` to 1e-12.

    Raises:
        ValueError: p outside (0, 1) or df not positive.
    """
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    while high - low > 1e-12 * max(1.0, high):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean (or mean difference) with its two-sided :data:`CONFIDENCE` interval.

    ``method``: ``paired`` (t on per-seed differences), ``welch`` (unequal variances) or
    ``one sample``; ``n``: pairs for paired, runs of (winner, baseline) for Welch."""

    mean: float
    low: float
    high: float
    df: float
    method: str
    n: tuple[int, ...]

    def contains_zero(self) -> bool:
        """True when the interval does not exclude 0: no difference is shown."""
        return self.low <= 0.0 <= self.high

    def n_text(self) -> str:
        """``n=3`` (paired or one sample) or ``n=3 and 2`` (Welch)."""
        return "n=" + " and ".join(str(k) for k in self.n) if len(set(self.n)) > 1 else f"n={self.n[0]}"


def mean_interval(values: Sequence[float]) -> Interval | None:
    """Return the t-interval of the mean of ``values``; None with fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(0.5 + CONFIDENCE / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values) - 1, "one sample", (len(values),))


def paired_interval(differences: Sequence[float]) -> Interval | None:
    """Return the paired t-interval of the mean of per-seed ``differences``; None with fewer
    than 2 pairs."""
    one = mean_interval(differences)
    return None if one is None else Interval(one.mean, one.low, one.high, one.df, "paired", one.n)


def welch_interval(a: Sequence[float], b: Sequence[float]) -> Interval | None:
    """Return Welch's t-interval of mean(a) - mean(b) (unequal variances,
    Welch-Satterthwaite degrees of freedom); None when either has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0.0:  # identical runs on both sides: no spread to estimate
        return Interval(diff, diff, diff, math.inf, "welch", (len(a), len(b)))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * math.sqrt(va + vb)
    return Interval(diff, diff - half, diff + half, df, "welch", (len(a), len(b)))


def difference(winner: dict[int, float], baseline: dict[int, float]) -> Interval | None:
    """Return the interval of winner - baseline from accuracies by seed: paired over the seeds
    when both ran exactly the same ones, else Welch over all runs; None when either side
    has fewer than 2 runs (a paired difference of identical runs has zero width)."""
    if set(winner) == set(baseline):
        diffs = [winner[s] - baseline[s] for s in sorted(winner)]
        paired = paired_interval(diffs)
        if paired is not None and paired.low == paired.high:  # zero spread: report it as exact
            return Interval(paired.mean, paired.mean, paired.mean, paired.df, "paired", paired.n)
        return paired
    return welch_interval(list(winner.values()), list(baseline.values()))


def _points(x: float) -> str:
    return f"{x:+.2f}"


def gain_sentence(interval: Interval, metric: str, baseline_name: str) -> str:
    """Return one sentence on ``interval`` (winner - baseline, in accuracy points) for
    ``metric`` (``val``/``test``): the difference with its interval, or, when the interval
    contains 0, that the winner is not distinguishable from ``baseline_name`` at this n."""
    span = (f"{CONFIDENCE:.0%} interval {_points(interval.low)} to {_points(interval.high)}, "
            f"{interval.method}, {interval.n_text()}")
    if interval.contains_zero():
        return (f"{metric} {_points(interval.mean)} points: not distinguishable from {baseline_name} at "
                f"{interval.n_text()} ({span})")
    side = "over" if interval.mean > 0 else "below"
    return f"{metric} {_points(interval.mean)} points {side} {baseline_name} ({span})"


def more_seeds_advice(interval: Interval, seeds: int) -> str | None:
    """Return the advice to confirm with more seeds when ``interval`` contains 0 (None
    otherwise): about how many seeds would make its half-width smaller than the observed
    difference (the width shrinks as 1/sqrt(n)), at least twice ``seeds``."""
    if not interval.contains_zero():
        return None
    half = (interval.high - interval.low) / 2
    wanted = 2 * seeds
    if abs(interval.mean) > 0 and half > 0:
        wanted = max(wanted, math.ceil(seeds * (half / abs(interval.mean)) ** 2))
    return (f"to tell them apart, confirm with more seeds (e.g. `--seeds {min(wanted, 20)}`; "
            f"a difference this small may need {wanted})" if wanted > 20
            else f"to tell them apart, confirm with more seeds (e.g. `--seeds {wanted}`)")


__all__ = ["CONFIDENCE", "Interval", "difference", "gain_sentence", "incomplete_beta", "mean_interval",
           "more_seeds_advice", "paired_interval", "t_cdf", "t_quantile", "welch_interval"]
