"""The gain's statistics against hand computations and tables: Student's t quantiles (integer
and Welch's fractional degrees of freedom), the paired and Welch intervals, and the words that
change when the interval crosses 0."""

from __future__ import annotations

import math

import pytest

from bkdsearch.gain import (
    difference,
    gain_sentence,
    mean_interval,
    more_seeds_advice,
    paired_interval,
    t_cdf,
    t_quantile,
    welch_interval,
)

# Two-sided 95% critical values (the 0.975 quantile) from any printed t table.
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 10: 2.2281, 30: 2.0423}


@pytest.mark.parametrize(("df", "expected"), sorted(T_975.items()))
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_closed_forms_symmetry_and_the_normal_limit() -> None:
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)).
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert t_quantile(0.9, 2) == pytest.approx(0.8 / math.sqrt(2 * 0.9 * 0.1), rel=1e-9)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7), rel=1e-12)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=5e-5)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def _density(x: float, df: float) -> float:
    front = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return front * (1 + x * x / df) ** (-(df + 1) / 2)


@pytest.mark.parametrize("df", [2.635, 5.5, 13.2])
def test_t_quantile_at_fractional_df_agrees_with_integrating_the_density(df: float) -> None:
    # Simpson's rule over [0, q], independent of the incomplete beta function used inside.
    q = t_quantile(0.975, df)
    steps = 2000
    h = q / steps
    area = _density(0, df) + _density(q, df) + sum((4 if i % 2 else 2) * _density(i * h, df) for i in range(1, steps))
    assert 0.5 + area * h / 3 == pytest.approx(0.975, abs=1e-9)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-12)


def test_paired_interval_against_a_hand_computation() -> None:
    # Winner 80.0, 81.0, 82.5 and baseline 79.0, 79.5, 80.0 on seeds 1000-1002:
    # differences 1.0, 1.5, 2.5; mean 5/3; sample sd sqrt(0.58333) = 0.763763;
    # se = 0.763763 / sqrt(3) = 0.440959; t(0.975, 2) = 4.302653; half-width 1.897293.
    gain = difference({1000: 80.0, 1001: 81.0, 1002: 82.5}, {1002: 80.0, 1000: 79.0, 1001: 79.5})
    assert gain is not None and gain.method == "paired" and gain.n == (3,) and gain.df == 2
    assert gain.mean == pytest.approx(1.666667, abs=1e-6)
    assert (gain.low, gain.high) == (pytest.approx(-0.230629, abs=1e-5), pytest.approx(3.563962, abs=1e-5))
    assert gain.contains_zero()


def test_welch_interval_against_a_hand_computation() -> None:
    # a = 80, 82, 84 (mean 82, var 4); b = 78, 79 (mean 78.5, var 0.5).
    # va = 4/3, vb = 0.25; se = sqrt(1.583333) = 1.258306;
    # df = 1.583333^2 / ((4/3)^2 / 2 + 0.25^2 / 1) = 2.506944 / 0.951389 = 2.635036.
    gain = welch_interval([80.0, 82.0, 84.0], [78.0, 79.0])
    assert gain is not None and gain.method == "welch" and gain.n == (3, 2)
    assert gain.df == pytest.approx(2.635036, abs=1e-6)
    half = t_quantile(0.975, 2.635036) * 1.258306
    assert (gain.mean, gain.low, gain.high) == (pytest.approx(3.5), pytest.approx(3.5 - half, abs=1e-5),
                                                pytest.approx(3.5 + half, abs=1e-5))
    # Equal sizes and variances: df = 2 (n - 1) = 4, t = 2.776445, se = sqrt(2/3) = 0.816497,
    # half-width 2.266958.
    even = welch_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert even is not None and even.df == pytest.approx(4.0)
    assert (even.low, even.high) == (pytest.approx(-3.266958, abs=1e-5), pytest.approx(1.266958, abs=1e-5))


def test_difference_pairs_only_when_both_ran_the_same_seeds() -> None:
    other_seeds = difference({1000: 80.0, 1001: 81.0, 1002: 82.5}, {1000: 79.0, 1001: 79.5, 1003: 80.0})
    assert other_seeds is not None and other_seeds.method == "welch" and other_seeds.n == (3, 3)
    assert difference({1000: 80.0}, {1000: 79.0}) is None  # one seed: no interval
    assert paired_interval([1.0]) is None and welch_interval([1.0, 2.0], [3.0]) is None
    one = mean_interval([80.0, 82.0, 84.0])  # 82 +- 4.302653 * 2 / sqrt(3)
    assert one is not None and one.high - one.mean == pytest.approx(4.968275, abs=1e-5)


def test_the_words_change_when_the_interval_crosses_zero() -> None:
    crossing = difference({1: 80.0, 2: 81.0, 3: 82.5}, {1: 79.0, 2: 79.5, 3: 80.0})
    clear = difference({1: 80.0, 2: 80.7, 3: 81.1}, {1: 79.0, 2: 79.5, 3: 80.0})  # diffs 1.0, 1.2, 1.1
    worse = difference({1: 78.0, 2: 78.3, 3: 78.9}, {1: 79.0, 2: 79.5, 3: 80.0})  # diffs -1.0, -1.2, -1.1
    assert crossing is not None and clear is not None and worse is not None
    said = gain_sentence(crossing, "val", "the published configuration")
    assert "not distinguishable from the published configuration at n=3" in said
    assert "+1.67 points" in said and "-0.23 to +3.56" in said
    assert more_seeds_advice(crossing, 3) is not None and "--seeds" in more_seeds_advice(crossing, 3)

    assert (clear.low, clear.high) == (pytest.approx(0.851586, abs=1e-5), pytest.approx(1.348414, abs=1e-5))
    said = gain_sentence(clear, "val", "the published configuration")
    assert said.startswith("val +1.10 points over the published configuration")
    assert "not distinguishable" not in said and more_seeds_advice(clear, 3) is None
    assert "points below the published configuration" in gain_sentence(worse, "val", "the published configuration")
