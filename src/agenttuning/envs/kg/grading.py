"""Grading for the ``kg`` environment: F1 between answer and gold entity sets, exact match for counts.

AgentBench grades its knowledge-graph task by F1 over the answer entities (and exact match); the same here:

- a *set* question's reward is the F1 between the entities of the answered variable and the gold entities (names
  are the graph's unique keys, so they are compared exactly); a number given for a set question scores 0;
- a *how many* question's reward is 1 when the answered number (a ``count`` variable or a plain integer) equals
  the gold count, else 0; a set given for it scores 0, even one of the right size;
- success is an exact match (reward 1).

>>> f1({"a", "b"}, {"b", "c"})
0.5
>>> score(EntitySet("country", frozenset({"Peru"})), "set", ["Peru", "Chile"])
(0.6666666666666666, False)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from agenttuning.envs.kg.tools import EntitySet, Number, Value


def f1(given: Collection[str], gold: Collection[str]) -> float:
    """The F1 score of a predicted set against a gold set (0 when either is empty)."""
    hits = len(set(given) & set(gold))
    if hits == 0:
        return 0.0
    precision, recall = hits / len(set(given)), hits / len(set(gold))
    return 2 * precision * recall / (precision + recall)


def score(value: Value, kind: Literal["set", "count"], answer: Collection[str] | int) -> tuple[float, bool]:
    """(reward, success) of a final answer to a question of ``kind`` whose gold is ``answer`` (a task's
    :class:`~agenttuning.envs.kg.payload.KgPayload` holds both)."""
    if kind == "count":
        ok = isinstance(value, Number) and value.value == answer
        return (1.0 if ok else 0.0), ok
    if not isinstance(value, EntitySet) or isinstance(answer, int):
        return 0.0, False
    reward = f1(value.members, answer)
    return reward, reward == 1.0


def as_json(value: Value) -> int | list[str]:
    """A final answer as plain data for ``info`` (sorted names, or the number)."""
    return value.value if isinstance(value, Number) else sorted(value.members)
