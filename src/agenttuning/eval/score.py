"""The overall score as AgentTuning computes it: per-task scores normalised across models, averaged within a group.

Tasks differ in difficulty, so a plain average of raw scores lets an easy task (high scores) swamp a hard one
(low scores). AgentTuning (§3.1, "Overall score calculation", following AgentBench) normalises each task's scores
by the average over the models being compared, "scaling to an average of 1", and averages within the held-in and
held-out groups. With ``s[m][t]`` the score of model ``m`` on task (= environment) ``t``:

.. code-block:: text

    norm[t]        = mean over the reference models r of s[r][t]          (the task's normaliser)
    overall[m][g]  = mean over the tasks t of group g with norm[t] > 0 of  s[m][t] / norm[t]

* The **reference models** are, by default, the models being compared (``normalisers(scores)``), so a task's
  normalised scores average to exactly 1 across them. For scores that must stay comparable when models are added,
  pass fixed normalisers, e.g. read from a JSON file ``{env_id: value}`` (:func:`load_normalisers`); the paper's
  Table 3 prints *weights*, which are ``1 / normaliser``.
* A **normaliser of 0** (every reference model scored 0 on the task) leaves the ratio undefined. Such a task is
  **skipped** in every group it belongs to: it cannot separate the models, and it is named in
  :attr:`OverallReport.skipped` and under the table. A group left with no task has no overall score: its key is
  absent for every model (and the table shows ``-``). A negative normaliser is an error.
* Every model must have a score for every task of every group it is scored on (missing scores are an error
  rather than a silently different average); a fixed normaliser file must cover every task of the groups.

Worked example (two models, one group)::

    >>> scores = {"a": {"t1": 0.8, "t2": 0.1}, "b": {"t1": 0.4, "t2": 0.3}}
    >>> {t: round(v, 4) for t, v in normalisers(scores).items()}   # t1: (0.8 + 0.4) / 2, t2: (0.1 + 0.3) / 2
    {'t1': 0.6, 't2': 0.2}
    >>> {m: round(g["all"], 4) for m, g in overall(scores, {"all": ["t1", "t2"]}).items()}
    {'a': 0.9167, 'b': 1.0833}

(``a``: (0.8/0.6 + 0.1/0.2) / 2 = (1.3333 + 0.5) / 2; ``b``: (0.4/0.6 + 0.3/0.2) / 2 = (0.6667 + 1.5) / 2.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "OverallReport",
    "load_normalisers",
    "normalisers",
    "overall",
    "overall_report",
    "scores_from_results",
    "skipped_tasks",
]

Scores = Mapping[str, Mapping[str, float]]  # model -> task -> score


def normalisers(scores: Scores) -> dict[str, float]:
    """Each task's mean score over the models that have it: ``{task: mean}`` (tasks in first-seen order)."""
    sums: dict[str, list[float]] = {}
    for per_task in scores.values():
        for task, value in per_task.items():
            if not math.isfinite(value):
                raise ValueError(f"score of task {task!r} is {value}: scores must be finite")
            sums.setdefault(task, []).append(float(value))
    return {task: math.fsum(values) / len(values) for task, values in sums.items()}


def skipped_tasks(groups: Mapping[str, Sequence[str]], norms: Mapping[str, float]) -> dict[str, list[str]]:
    """``{group: [tasks whose normaliser is 0]}`` for the groups that have any (those tasks are left out)."""
    out: dict[str, list[str]] = {}
    for g, tasks in groups.items():
        zero = [t for t in tasks if t in norms and norms[t] == 0]
        if zero:
            out[g] = zero
    return out


def overall(
    scores: Scores, groups: Mapping[str, Sequence[str]], normalisers: Mapping[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """``{model: {group: overall score}}`` by the formula of the module docstring.

    ``normalisers`` None = the mean over the models in ``scores``. Tasks with a normaliser of 0 are skipped; a
    group with no task left is absent from every model's dict.
    """
    norms = dict(normalisers) if normalisers is not None else _default_normalisers(scores)
    out: dict[str, dict[str, float]] = {m: {} for m in scores}
    for g, tasks in groups.items():
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"group {g!r} lists a task twice")
        missing_norm = [t for t in tasks if t not in norms]
        if missing_norm:
            raise ValueError(f"group {g!r}: no normaliser for {missing_norm}")
        bad = [t for t in tasks if not math.isfinite(norms[t]) or norms[t] < 0]
        if bad:
            raise ValueError(f"group {g!r}: normalisers must be finite and >= 0, got {[(t, norms[t]) for t in bad]}")
        usable = [t for t in tasks if norms[t] > 0]
        if not usable:
            continue
        for m, per_task in scores.items():
            absent = [t for t in tasks if t not in per_task]
            if absent:
                raise ValueError(f"model {m!r} has no score for {absent} (group {g!r})")
            out[m][g] = math.fsum(per_task[t] / norms[t] for t in usable) / len(usable)
    return out


def _default_normalisers(scores: Scores) -> dict[str, float]:
    return normalisers(scores)


# ------------------------------------------------------------------------------------------------------------
# Files and the report


def load_normalisers(path: str | os.PathLike[str]) -> dict[str, float]:
    """Fixed normalisers from a JSON file ``{env_id: value}`` (values are mean scores, not weights)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object {{env_id: number}}")
    return {k: float(v) for k, v in data.items()}


def scores_from_results(
    results: Mapping[str, str | os.PathLike[str]],
    metric: Literal["success_rate", "mean_reward"] = "mean_reward",
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """``(scores, groups)`` from several models' agent ``results.json`` files: ``{model: path}``.

    The score of a task is the environment's ``metric`` (default the mean reward: the environment's own score,
    which is the success rate wherever rewards are 0/1). Every file must hold the same environments with the same
    versioned ids, prompt hashes and groups, or the comparison is refused.
    """
    from agenttuning.eval.agent import load_agent_result

    scores: dict[str, dict[str, float]] = {}
    reference: tuple[str, dict[str, tuple[str, str]]] | None = None
    groups: dict[str, list[str]] = {}
    for model, path in results.items():
        r = load_agent_result(path)
        key = {e.env_id: (e.prompt_hash, e.group) for e in r.envs}
        if reference is None:
            reference, groups = (model, key), r.groups()
        elif key != reference[1]:
            raise ValueError(
                f"{path}: its environments, prompt hashes or groups differ from those of {reference[0]!r}; "
                "scores are comparable only on the same environments, prompts and held-in families"
            )
        scores[model] = r.scores(metric)
    return scores, groups


@dataclass(frozen=True)
class OverallReport:
    """Overall scores with what went into them: the normalisers used and the tasks skipped for a 0 normaliser."""

    scores: dict[str, dict[str, float]]  # model -> group -> overall
    per_task: dict[str, dict[str, float]]  # model -> task -> raw score
    groups: dict[str, list[str]]
    normalisers: dict[str, float]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # group -> tasks left out (normaliser 0)
    fixed_normalisers: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"scores": self.scores, "per_task": self.per_task, "groups": self.groups,
                "normalisers": self.normalisers, "skipped": self.skipped,
                "fixed_normalisers": self.fixed_normalisers}  # fmt: skip

    def table(self, title: str = "overall score (normalised, AgentTuning §3.1)") -> Table:
        """Models as rows; per group its overall score, then the raw task scores."""
        from rich.table import Table

        t = Table(title=title, header_style="bold")
        t.add_column("model")
        names = list(self.groups)
        for g in names:
            t.add_column(f"{g} overall", justify="right")
        tasks = [task for g in names for task in self.groups[g]]
        for task in tasks:
            t.add_column(task, justify="right")
        for m, per_group in self.scores.items():
            cells = [f"{per_group[g]:.2f}" if g in per_group else "-" for g in names]
            cells += [f"{self.per_task[m][task]:.3f}" for task in tasks]
            t.add_row(m, *cells)
        source = "fixed" if self.fixed_normalisers else "mean over these models"
        caption = [f"normaliser = {source}"]
        for g, skipped in self.skipped.items():
            caption.append(f"{g}: skipped {', '.join(skipped)} (every reference model scored 0)")
        t.caption = "; ".join(caption)
        return t


def overall_report(
    scores: Scores, groups: Mapping[str, Sequence[str]], normalisers: Mapping[str, float] | None = None
) -> OverallReport:
    """:func:`overall` plus the normalisers it used and the tasks it skipped, for printing and saving."""
    norms = dict(normalisers) if normalisers is not None else _default_normalisers(scores)
    used = {t: norms[t] for tasks in groups.values() for t in tasks if t in norms}
    return OverallReport(
        scores=overall(scores, groups, norms),
        per_task={m: {t: float(v) for t, v in per_task.items()} for m, per_task in scores.items()},
        groups={g: list(tasks) for g, tasks in groups.items()},
        normalisers=used,
        skipped=skipped_tasks(groups, norms),
        fixed_normalisers=normalisers is not None,
    )
