"""What a ``db`` task carries in its payload: the gold SQL, and the gold rows or the gold table hash.

Written by :mod:`.tasks` as a plain JSON object (the task files' format); read as :class:`DbPayload` by the episode
(:mod:`.env`, validated once at reset) and the expert (:mod:`.expert`), so a malformed task fails at reset with its
id instead of deep inside grading.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

Kind = Literal["select", "insert", "update", "delete"]


class DbPayload(BaseModel):
    """A ``db`` task's gold data. A question (``kind`` "select") is graded against :attr:`answer`; a change (insert,
    update, delete) by the hash of :attr:`table` after the episode, which must equal :attr:`table_hash`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str  # the template the question came from, e.g. "capital"
    entity: str  # the split key it is about, e.g. "country:FR"
    kind: Kind
    sql: str  # the gold statement (the expert runs it)
    ordered: bool = False  # a question whose answer order counts (ORDER BY)
    need: str  # what the expert says it needs, e.g. "the capital of France"
    tables: list[str]  # the tables the gold statement reads or changes
    answer: list[list[Any]]  # a question's gold rows (empty for a change)
    table: str | None = None  # a change's target table
    table_hash: str | None = None  # the hash of that table after the gold change
    rows_affected: int | None = None  # how many rows the gold change alters

    @model_validator(mode="after")
    def _gold_for_the_kind(self) -> DbPayload:
        if self.kind == "select" and not self.answer:
            raise ValueError("a select task needs its gold rows in 'answer'")
        if self.kind != "select" and (self.table is None or self.table_hash is None):
            raise ValueError(f"a change ({self.kind}) needs 'table' and 'table_hash' (the table's gold hash)")
        return self
