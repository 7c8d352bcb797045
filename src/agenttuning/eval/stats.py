"""Confidence intervals for per-environment scores: Wilson for a success rate, a seeded bootstrap for a mean reward.

A test split of a few hundred tasks leaves several points of sampling noise on a success rate, so every score the
evaluation reports carries a 95% interval (AgentTuning section 3 reports point estimates only; the intervals are
ours, so that two runs can be told apart from noise).

* **Success rate** — the Wilson score interval (Wilson, 1927) for ``s`` successes in ``n`` tasks::

      p = s / n,   z = 1.959964 (95%)
      centre = (p + z²/(2n)) / (1 + z²/n)
      half   = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/(4n²))
      [centre - half, centre + half]

  Unlike the normal (Wald) interval it never leaves [0, 1] and is not empty at ``p = 0`` or ``p = 1``: all ``n``
  tasks solved gives ``[n / (n + z²), 1]``, none gives ``[0, z² / (n + z²)]`` (the end at 0 or 1 is exact).

* **Mean reward** — the percentile bootstrap: ``resamples`` (default 2,000) resamples of the ``n`` rewards with
  replacement, the mean of each, and the 2.5th and 97.5th percentiles of those means (linear interpolation
  between order statistics). Rewards need not be 0/1 (partial credit), so no binomial formula applies, and the
  bootstrap assumes nothing about their distribution. It is seeded: ``random.Random(f"{seed}/{key}")`` with the
  environment's id as ``key`` gives the same interval on every run and machine for the same rewards. All rewards
  equal gives the zero-width interval at that value. Percentile bootstrap intervals are somewhat too narrow for
  small ``n`` (below ~20): read them as indicative there.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    >>> wilson_interval(5, 5)[1], wilson_interval(0, 5)[0]
    (1.0, 0.0)
    >>> bootstrap_mean_interval([1.0, 1.0, 1.0])
    (1.0, 1.0)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` out of ``n`` (``(0.0, 1.0)`` when ``n == 0``)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default ``percentile`` method)."""
    pos = q * (len(sorted_values) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def bootstrap_mean_interval(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    key: str = "",
) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval for the mean of ``values`` (``(nan, nan)`` when there are none)."""
    if not values:
        return math.nan, math.nan
    if min(values) == max(values):
        return float(values[0]), float(values[0])
    rng = random.Random(f"{seed}/{key}")
    n = len(values)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return _percentile(means, alpha), _percentile(means, 1 - alpha)
