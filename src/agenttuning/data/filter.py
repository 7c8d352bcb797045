"""Trajectory filtering (AgentTuning section 2.1, "Trajectory Filtering"), with per-environment statistics.

The paper keeps only trajectories whose final reward is 1, except for Mind2Web where, the task being hard, it keeps
reward >= 2/3 to have enough data; of 35,341 trajectories generated, 1,866 survive (5.3%). Here a trajectory is kept
when, checked in this order (the first failing check is its one drop reason):

1. ``not_done``: the environment ended it (``end_reason == "done"``; not stopped by a budget, timeout or error);
2. ``parse_error``: no step holds a reply without a parsable action (an assistant turn that is not ReAct);
3. ``low_reward``: its reward reaches its family's threshold (``min_reward``, a number or per-family mapping);
4. ``not_success``: with ``require_success``, it also counts as solved;
5. ``too_long``: with ``max_tokens``, its whole training conversation fits that many tokens.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from agenttuning.data.example import family_of
from agenttuning.data.rows import write_json
from agenttuning.schema import Trajectory, conversation

# the paper's thresholds: reward == 1 everywhere ("*"), >= 2/3 for Mind2Web
PAPER_MIN_REWARD: Mapping[str, float] = MappingProxyType({"*": 1.0, "mind2web": 2 / 3})
REASONS = ("not_done", "parse_error", "low_reward", "not_success", "too_long")
_EPS = 1e-9  # rewards like 2/3 arrive as floats


def approx_tokens(text: str) -> int:
    """Default token count when no tokenizer is given: about four characters per token.

    >>> approx_tokens("x" * 41)
    10
    """
    return len(text) // 4


def conversation_text(traj: Trajectory) -> str:
    """The text a token budget applies to: every turn of the training conversation, joined by newlines."""
    return "\n".join(t.content for t in conversation(traj))


def threshold(min_reward: float | Mapping[str, float], family: str) -> float:
    """The reward a family needs: a number for all, or ``{family: r}`` with ``"*"`` (default 1.0) for the rest.

    >>> threshold(PAPER_MIN_REWARD, "mind2web") == 2 / 3, threshold(PAPER_MIN_REWARD, "db")
    (True, 1.0)
    """
    if isinstance(min_reward, Mapping):
        return float(min_reward.get(family, min_reward.get("*", 1.0)))
    return float(min_reward)


@dataclass(frozen=True)
class EnvStats:
    """One row of the filtering table: an environment (or ``"all"``)."""

    env: str
    total: int
    kept: int
    kept_pct: float  # 100 * kept / total
    mean_turns: float  # mean agent turns (steps) of the kept trajectories
    mean_tokens: float  # mean conversation tokens of the kept trajectories
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(frozen=True)
class FilterResult:
    """Kept trajectories (input order), drops by reason, one stats row per environment and the ``all`` row."""

    kept: list[Trajectory]
    dropped: Counter[str]
    rows: list[EnvStats]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> EnvStats:
        return self.rows[-1]

    def to_json(self) -> dict[str, Any]:
        """The content of ``stats.json``."""
        return {"settings": self.settings, "dropped": dict(self.dropped), "envs": [asdict(r) for r in self.rows]}


def drop_reason(
    traj: Trajectory,
    *,
    min_reward: float | Mapping[str, float] = PAPER_MIN_REWARD,
    require_success: bool = False,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_tokens,
) -> tuple[str | None, int | None]:
    """Why ``traj`` is dropped (None to keep it), and its token count when it was computed (the last check)."""
    if traj.end_reason != "done" or traj.error is not None:
        return "not_done", None
    if any(s.parse_error is not None for s in traj.steps):
        return "parse_error", None
    if traj.reward < threshold(min_reward, family_of(traj.task.env)) - _EPS:
        return "low_reward", None
    if require_success and not traj.success:
        return "not_success", None
    n = count_tokens(conversation_text(traj))
    if max_tokens is not None and n > max_tokens:
        return "too_long", n
    return None, n


def filter_trajectories(
    trajs: Iterable[Trajectory],
    *,
    min_reward: float | Mapping[str, float] = PAPER_MIN_REWARD,
    require_success: bool = False,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> FilterResult:
    """Keep the trajectories worth training on (section 2.1) and count, per environment, what was kept and why not.

    ``require_success`` is off by default: the paper filters by reward alone (a 2/3-reward Mind2Web trajectory is
    kept though not a success). ``count_tokens`` defaults to :func:`approx_tokens`; pass a tokenizer's length.
    """
    counter = count_tokens or approx_tokens
    kept: list[Trajectory] = []
    dropped: Counter[str] = Counter()
    per_env: dict[str, dict[str, Any]] = defaultdict(lambda: {"total": 0, "turns": 0, "tokens": 0, "kept": 0,
                                                              "dropped": Counter()})  # fmt: skip
    for t in trajs:
        reason, n = drop_reason(
            t, min_reward=min_reward, require_success=require_success, max_tokens=max_tokens, count_tokens=counter
        )
        acc = per_env[t.task.env]
        acc["total"] += 1
        if reason is None:
            kept.append(t)
            acc["kept"] += 1
            acc["turns"] += len(t.steps)
            acc["tokens"] += n or 0
        else:
            dropped[reason] += 1
            acc["dropped"][reason] += 1
    rows = [_row(env, acc) for env, acc in sorted(per_env.items())]
    everything: dict[str, Any] = {"total": 0, "turns": 0, "tokens": 0, "kept": 0, "dropped": Counter()}
    for acc in per_env.values():
        for k in everything:
            everything[k] += acc[k]
    rows.append(_row("all", everything))
    settings = {
        "min_reward": dict(min_reward) if isinstance(min_reward, Mapping) else min_reward,
        "require_success": require_success,
        "max_tokens": max_tokens,
        "count_tokens": getattr(counter, "__name__", type(counter).__name__),
    }
    return FilterResult(kept, dropped, rows, settings)


def _row(env: str, acc: dict[str, Any]) -> EnvStats:
    total, kept = acc["total"], acc["kept"]
    return EnvStats(
        env=env,
        total=total,
        kept=kept,
        kept_pct=round(100 * kept / total, 2) if total else 0.0,
        mean_turns=round(acc["turns"] / kept, 2) if kept else 0.0,
        mean_tokens=round(acc["tokens"] / kept, 1) if kept else 0.0,
        dropped={r: acc["dropped"][r] for r in REASONS if acc["dropped"][r]},
    )


def stats_table(result: FilterResult | Sequence[EnvStats | dict[str, Any]], *,
                title: str = "Trajectory filtering (AgentTuning section 2.1)") -> Any:  # fmt: skip
    """The per-environment statistics as a rich Table (last row: all environments); from a result, or its rows as
    ``stats.json`` holds them (``envs``)."""
    from rich.table import Table

    rows = result.rows if isinstance(result, FilterResult) else [r if isinstance(r, EnvStats) else EnvStats(**r)
                                                                  for r in result]  # fmt: skip

    table = Table(title=title)
    for col in ("env", "total", "kept", "kept %", "mean turns", "mean tokens", "dropped"):
        table.add_column(col, justify="left" if col in ("env", "dropped") else "right")
    for i, r in enumerate(rows):
        why = ", ".join(f"{k} {v}" for k, v in r.dropped.items())
        nums = (str(r.total), str(r.kept), f"{r.kept_pct:.1f}", f"{r.mean_turns:.1f}", f"{r.mean_tokens:.0f}")
        table.add_row(r.env, *nums, why, end_section=i == len(rows) - 2)  # a rule above the "all" row
    return table


def write_stats(result: FilterResult, path: str | os.PathLike[str]) -> None:
    """Write :meth:`FilterResult.to_json` to ``path`` (``stats.json``), atomically."""
    write_json(path, result.to_json())
