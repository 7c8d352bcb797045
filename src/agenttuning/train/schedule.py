"""The learning-rate schedule of AgentTuning §3.1: linear warmup over ``warmup_ratio`` of the steps, then cosine decay.

    >>> f = cosine_with_warmup(total_steps=10, warmup_steps=2)
    >>> [round(f(s), 3) for s in range(10)]
    [0.5, 1.0, 1.0, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038]

``f(s)`` multiplies ``lr`` during optimizer step ``s`` (0-based). Warmup reaches the full rate at its last step
(``(s + 1) / warmup``: no step is wasted at lr 0, unlike schedules that start from 0), and the cosine runs over the
remaining steps from ``1`` towards ``min_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """``ceil(warmup_ratio * total_steps)`` (2% of 1,000 steps: 20)."""
    return math.ceil(warmup_ratio * total_steps - 1e-9) if warmup_ratio > 0 else 0


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """The lr multiplier per optimizer step (a picklable-free closure; the scheduler's state is only its step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


__all__ = ["cosine_with_warmup", "warmup_steps_for"]
