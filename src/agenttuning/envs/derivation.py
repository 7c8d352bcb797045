"""Turning a family's candidate questions into its two splits of tasks, the same way for every family.

A family's templates yield *candidates* (a question with its gold data); the family decides which split each one
belongs to, by the entities it names (:func:`split_of`: a SHA-256 of a stable key, never Python's salted ``hash``),
so no test question names what a training question names. :func:`tasks_from_candidates` then keeps, per split, at
most a cap of questions per template, chosen in the order of a SHA-256 of their text; drops any question whose
normalised text occurs in both splits, or twice in one; and numbers the kept ones as :class:`Task` records. So the
lists are the same on every call and machine, and both families (and any new one) select by one rule.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from agenttuning.envs.base import Split
from agenttuning.schema import Task, normalise_text


class Candidate(Protocol):
    """What selection reads of a family's candidate question."""

    @property
    def template(self) -> str: ...

    @property
    def question(self) -> str: ...


C = TypeVar("C", bound=Candidate)


def stable_int(*parts: str) -> int:
    """A platform- and run-independent integer from strings (never Python's salted ``hash``): for deriving tasks."""
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest(), 16)


def split_of(salt: str, key: str, test_percent: int) -> Split:
    """The split of the entity ``key``: ``"test"`` for about ``test_percent`` percent of keys, else ``"train"``;
    ``salt`` (the family's own, e.g. ``"db-split"``) keeps families' splits independent of each other."""
    return "test" if stable_int(salt, key) % 100 < test_percent else "train"


def _order(c: Candidate) -> str:
    return hashlib.sha256(f"{c.template}\x1f{c.question}".encode()).hexdigest()


def tasks_from_candidates(by_split: Mapping[str, Sequence[C]], *, family: str, env_id: str, cap: Mapping[str, int],
                          payload: Callable[[C], dict[str, Any] | None]) -> dict[str, list[Task]]:
    """The tasks of each split from its candidates: per template at most ``cap[split]``, in the order of a SHA-256
    of template and question; a question whose normalised text is in both splits is dropped from both, and one seen
    already in its split is skipped. ``payload(c)`` gives the kept candidate's task payload, or None to pass it over
    (it is asked only for candidates that would be kept, in that order, so an expensive gold check runs no more than
    needed). Tasks are numbered ``{family}-{split}-00000`` in the same hash order."""
    texts = {split: {normalise_text(c.question) for c in cs} for split, cs in by_split.items()}
    shared = texts["train"] & texts["test"]
    out: dict[str, list[Task]] = {}
    for split, candidates in by_split.items():
        kept: list[tuple[C, dict[str, Any]]] = []
        per_template: Counter[str] = Counter()
        seen: set[str] = set()
        for c in sorted(candidates, key=_order):
            text = normalise_text(c.question)
            if per_template[c.template] >= cap[split] or text in shared or text in seen:
                continue
            data = payload(c)
            if data is None:
                continue
            seen.add(text)
            per_template[c.template] += 1
            kept.append((c, data))
        out[split] = [
            Task(id=f"{family}-{split}-{i:05d}", env=env_id, split=split, instruction=c.question, payload=data)
            for i, (c, data) in enumerate(kept)  # already in hash order
        ]
    return out
