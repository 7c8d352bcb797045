"""Confidence intervals against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from agenttuning.eval.stats import Z95, bootstrap_mean_interval, wilson_interval


def test_wilson_matches_hand_computation():
    # 8 of 10, z = 1.959964, z^2 = 3.841459:
    #   centre = (0.8 + 3.841459/20) / (1 + 3.841459/10) = 0.992073 / 1.384146 = 0.716740
    #   half   = 1.959964 / 1.384146 * sqrt(0.8*0.2/10 + 3.841459/400) = 1.416010 * 0.160011 = 0.226577
    #   -> [0.490163, 0.943317]
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490163, abs=1e-5)
    assert hi == pytest.approx(0.943317, abs=1e-5)


@pytest.mark.parametrize("n", [1, 4, 5, 200])
def test_wilson_at_the_ends(n):
    # all solved: [n / (n + z^2), 1]; none: [0, z^2 / (n + z^2)]
    z2 = Z95**2
    assert wilson_interval(n, n) == (pytest.approx(n / (n + z2)), 1.0)
    assert wilson_interval(0, n) == (0.0, pytest.approx(z2 / (n + z2)))


def test_wilson_hand_values_small_n():
    # 4 of 4: 4 / (4 + 3.841459) = 0.510110 ; 0 of 5: 3.841459 / 8.841459 = 0.434482
    assert wilson_interval(4, 4)[0] == pytest.approx(0.510110, abs=1e-6)
    assert wilson_interval(0, 5)[1] == pytest.approx(0.434482, abs=1e-6)


def test_wilson_rejects_impossible_counts_and_handles_empty():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1.0, 0.0, 0.5, 1.0, 0.25, 0.0, 1.0, 0.75]
    a = bootstrap_mean_interval(values, seed=0, key="db-v1")
    assert a == bootstrap_mean_interval(values, seed=0, key="db-v1")
    assert a != bootstrap_mean_interval(values, seed=1, key="db-v1")
    mean = sum(values) / len(values)
    assert 0.0 <= a[0] < mean < a[1] <= 1.0
    # roughly mean +- 1.96 * sd/sqrt(n) (sd/sqrt(n) = 0.147 here): a loose check of scale, not of coverage
    assert 0.35 < a[1] - a[0] < 0.75


def test_bootstrap_degenerate_cases():
    assert bootstrap_mean_interval([0.5] * 7) == (0.5, 0.5)
    lo, hi = bootstrap_mean_interval([])
    assert math.isnan(lo) and math.isnan(hi)
