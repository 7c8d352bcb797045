"""Duplicates and test-set contamination (AgentTuning section 2.1 and its contamination analysis).

A training item (a :class:`~agenttuning.schema.Trajectory` or an :class:`~agenttuning.data.example.Example`, agent
or general) is dropped, for the first reason that applies, in this order:

- ``test_id``: its id is the id of a ``test`` task of any registered environment;
- ``test_instruction``: its task text, normalised (:func:`~agenttuning.schema.normalise_text`), equals a test
  instruction;
- ``test_ngram``: its task text shares a 10-gram of normalised word tokens with a test instruction;
- ``duplicate_id``: an earlier kept item has the same id (several rollouts of one task: the first is kept);
- ``duplicate_text``: an earlier kept item of the same family has the same normalised conversation.

The *task text* is the trajectory's instruction; for an agent example the user turn its first trained reply
answers (the task, after the in-context prefix); for general chat every user turn, each on its own.

Speed: the test side is indexed once (:class:`ContaminationIndex`: ids, normalised instructions, and a hash table
of 10-gram word tuples); a training text is tokenised once and all its 10-grams are built and looked up in C
(``zip`` of shifted word lists against ``dict.keys().isdisjoint``): about a second per million words.

Templated tasks share boilerplate: db-v1's test questions "How many people live in the most populous city of X?"
share the 10-gram "how many people live in the most populous city of" with every train question of that template.
A 10-gram that occurs in ``boilerplate`` (default 2) or more distinct test instructions identifies no test task,
so it is not used (``boilerplate=None`` keeps every 10-gram: the strict check). Test instructions shorter than 10
words are matched only by their normalised text.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agenttuning.data.example import Example, family_of, task_turn
from agenttuning.schema import Task, Trajectory, conversation, normalise_text

NGRAM = 10
REASONS = ("test_id", "test_instruction", "test_ngram", "duplicate_id", "duplicate_text")
_WORD = re.compile(r"\w+")
T = TypeVar("T", Trajectory, Example)


def words(text: str) -> list[str]:
    """Normalised word tokens: lower-cased runs of letters, digits and underscores (punctuation dropped).

    >>> words("Which countries border  Sri-Lanka?")
    ['which', 'countries', 'border', 'sri', 'lanka']
    """
    return _WORD.findall(text.lower())  # the words of normalise_text(text): collapsing whitespace changes none


@dataclass(frozen=True)
class ContaminationIndex:
    """The test side, indexed once: task ids, normalised instructions and n-grams, each -> a test task id."""

    ids: frozenset[str]
    instructions: dict[str, str]
    grams: dict[tuple[str, ...], str]
    n: int = NGRAM
    n_tasks: int = 0

    @classmethod
    def build(cls, tasks: Iterable[Task], *, n: int = NGRAM, boilerplate: int | None = 2) -> ContaminationIndex:
        """Index test tasks; n-grams found in ``boilerplate`` or more distinct instructions are left out."""
        ids, instructions = set(), {}
        owners: dict[tuple[str, ...], set[str]] = defaultdict(set)  # gram -> normalised instructions holding it
        first: dict[tuple[str, ...], str] = {}  # gram -> first test task id holding it
        for t in tasks:
            ids.add(t.id)
            norm = normalise_text(t.instruction)
            if norm:
                instructions.setdefault(norm, t.id)
            ws = words(t.instruction)
            for i in range(len(ws) - n + 1):
                g = tuple(ws[i : i + n])
                owners[g].add(norm)
                first.setdefault(g, t.id)
        grams = {g: first[g] for g, o in owners.items() if boilerplate is None or len(o) < boilerplate}
        return cls(frozenset(ids), instructions, grams, n, len(ids))

    @classmethod
    def from_registry(cls, *, n: int = NGRAM, boilerplate: int | None = 2) -> ContaminationIndex:
        """Index the ``test`` split of every registered environment (:func:`agenttuning.envs.base.available`)."""
        from agenttuning.envs.base import available

        return cls.build((t for d in available() for t in d.tasks("test")), n=n, boilerplate=boilerplate)

    def ngram_match(self, text: str) -> str | None:
        """The test task id whose instruction shares an n-gram with ``text``, else None."""
        if not self.grams:
            return None
        ws = words(text)
        grams = zip(*(ws[k:] for k in range(self.n)), strict=False)  # every n-gram of the text, built in C
        if self.grams.keys().isdisjoint(grams):  # the common case, at C speed
            return None
        return next(self.grams[g] for g in zip(*(ws[k:] for k in range(self.n)), strict=False) if g in self.grams)

    def match(self, item_id: str | None, texts: list[str]) -> tuple[str, str] | None:
        """``(reason, test task id)`` for the first contamination found, else None (reasons as in the module doc)."""
        if item_id is not None and item_id in self.ids:
            return "test_id", item_id
        for text in texts:
            hit = self.instructions.get(normalise_text(text)) if text.strip() else None
            if hit is not None:
                return "test_instruction", hit
        for text in texts:
            hit = self.ngram_match(text)
            if hit is not None:
                return "test_ngram", hit
        return None


def task_texts(item: Trajectory | Example) -> list[str]:
    """The texts compared with test instructions (see the module doc)."""
    if isinstance(item, Trajectory):
        return [item.task.instruction]
    if item.source == "agent":
        i = task_turn(item.turns)
        return [item.turns[i].content] if i is not None else []
    return [t.content for t in item.turns if t.role == "user"]


def _keys(item: Trajectory | Example) -> tuple[tuple[str, str], tuple[str, str, str]]:
    if isinstance(item, Trajectory):
        source, family, ident, turns = "agent", family_of(item.task.env), item.task.id, conversation(item)
    else:
        source, family, ident, turns = item.source, item.family, item.id, item.turns
    text = normalise_text("\n".join(f"{t.role}: {t.content}" for t in turns))
    return (source, ident), (source, family, hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True)
class Drop:
    """One dropped item: its id, why, and what it matched (a test task id, or the id of the item kept instead)."""

    id: str
    reason: str
    match: str


@dataclass(frozen=True)
class DecontamResult(Generic[T]):
    """Kept items (input order), drop counts by reason, and every drop with what it matched."""

    kept: list[T]
    dropped: Counter[str] = field(default_factory=Counter)
    drops: list[Drop] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"kept": len(self.kept), "dropped": {r: self.dropped[r] for r in REASONS if self.dropped[r]}}


def decontaminate(
    items: Iterable[T], index: ContaminationIndex | None = None, *, dedup: bool = True
) -> DecontamResult[T]:
    """Drop test-contaminated items and (with ``dedup``) duplicates, keeping the first of each.

    ``index`` defaults to :meth:`ContaminationIndex.from_registry` (the test split of every registered environment).
    """
    index = index if index is not None else ContaminationIndex.from_registry()
    kept: list[T] = []
    dropped: Counter[str] = Counter()
    drops: list[Drop] = []
    seen_ids: dict[tuple[str, str], str] = {}
    seen_text: dict[tuple[str, str, str], str] = {}
    for it in items:
        ident = it.task.id if isinstance(it, Trajectory) else it.id
        hit = index.match(ident, task_texts(it))
        if hit is None and dedup:
            id_key, text_key = _keys(it)
            if id_key in seen_ids:
                hit = ("duplicate_id", seen_ids[id_key])
            elif text_key in seen_text:
                hit = ("duplicate_text", seen_text[text_key])
            else:
                seen_ids[id_key] = seen_text[text_key] = ident
        if hit is None:
            kept.append(it)
        else:
            dropped[hit[0]] += 1
            drops.append(Drop(ident, *hit))
    return DecontamResult(kept, dropped, drops)
