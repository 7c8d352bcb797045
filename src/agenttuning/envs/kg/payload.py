"""What a ``kg`` task carries in its payload: the entities it names, its gold answer and its gold plan.

Written by :mod:`.tasks` as a plain JSON object (the task files' format); read as :class:`KgPayload` by the episode
(:mod:`.env`, validated once at reset), the grader and the expert, so a malformed task fails at reset with its id.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class PlanStep(BaseModel):
    """One tool call of the gold plan, with the Thought the expert gives for it (call ``i`` creates ``#i``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: str
    thought: str


class KgPayload(BaseModel):
    """A ``kg`` task's gold data: a *set* question is answered by the entities in :attr:`answer` (graded by F1), a
    *count* question by the number :attr:`answer` (exact)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str  # the template the question came from, e.g. "capital_currency"
    entities: list[str]  # the entities the question names, shown to the agent with it
    kind: Literal["set", "count"]
    answer: list[str] | int  # the gold entities (sorted) or the gold count
    plan: list[PlanStep]  # the expert's tool calls

    @model_validator(mode="after")
    def _answer_fits_the_kind(self) -> KgPayload:
        if (self.kind == "count") != isinstance(self.answer, int):
            want = "a number" if self.kind == "count" else "a list of entity names"
            raise ValueError(f"a {self.kind} question's answer must be {want}, not {self.answer!r}")
        if not self.entities:
            raise ValueError("a question names at least one entity ('entities' is empty)")
        return self
