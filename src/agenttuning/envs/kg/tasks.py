"""Derive the ``kg`` tasks: run every template over the graph and keep the questions with a clear answer.

Splits are assigned by *entity*: every country (a city goes with its country), currency and language belongs to one
split by a SHA-256 of its stable key (:data:`TEST_PERCENT` to test), and a question goes to the split of the entities
it names; a question that names entities of both splits is dropped (continents and sub-regions are shared by
everything and decide nothing). So no test question names a country, city, currency or language that a training
question names. Selection follows the rule every family shares
(:func:`agenttuning.envs.derivation.tasks_from_candidates`): per template at most :data:`CAP` questions in each
split, in the order of a SHA-256 of their text, none whose text is in both splits; the same list on every call and
machine (for the same package versions, which the db environment's cache key tracks).

Kept: set answers of 1 to :data:`MAX_ANSWER` entities, counts of at least 1 (a 0 would mean the plan's relation is
missing).
"""

from __future__ import annotations

from typing import Any

from agenttuning.envs import derivation
from agenttuning.envs.kg.data import Graph
from agenttuning.envs.kg.templates import TEMPLATES, Candidate
from agenttuning.schema import Task, normalise_text

TEST_PERCENT = 25  # share of entities in the test split
CAP = {"train": 36, "test": 14}  # questions kept per template and split
MAX_ANSWER = 20  # larger gold sets are dropped


def question_split(g: Graph, c: Candidate) -> str | None:
    """The split of a candidate, or None when it names entities of both splits."""
    keys = {k for e in c.entities if (k := g.split_key(e)) is not None} or {"question:" + normalise_text(c.question)}
    splits = {derivation.split_of("kg-split", k, TEST_PERCENT) for k in keys}
    return splits.pop() if len(splits) == 1 else None


def _useful(c: Candidate) -> bool:
    if c.kind == "count":
        return isinstance(c.answer, int) and c.answer >= 1
    return 1 <= len(c.answer) <= MAX_ANSWER  # type: ignore[arg-type]


def _payload(c: Candidate) -> dict[str, Any]:
    return {
        "template": c.template,
        "entities": list(c.entities),
        "kind": c.kind,
        "answer": c.answer if isinstance(c.answer, int) else list(c.answer),
        "plan": [{"action": a, "thought": t} for a, t in c.plan],
    }


def derive(g: Graph, env_id: str) -> dict[str, list[Task]]:
    """All tasks of both splits."""
    by_split: dict[str, list[Candidate]] = {"train": [], "test": []}
    for template in TEMPLATES:
        for c in template(g):
            split = question_split(g, c)
            if split is not None and _useful(c):
                by_split[split].append(c)
    return derivation.tasks_from_candidates(by_split, family="kg", env_id=env_id, cap=CAP, payload=_payload)
