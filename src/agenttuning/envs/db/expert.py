"""The ``db`` oracle: replies that solve a task from its stored gold SQL, and a deliberately wrong reply.

The expert runs the gold statement, then answers with the gold rows it was shown (for changes: an empty list, the
content does not count). It reads only ``history`` to know where it is: no assistant turn yet means "query".
"""

from __future__ import annotations

from typing import Any

from agenttuning.envs.db.payload import DbPayload
from agenttuning.schema import Turn


def render_answer(rows: list[list[Any]]) -> str:
    """Gold rows as the Python literal a Final Answer holds: a flat list for one column, tuples otherwise."""
    if rows and all(len(r) == 1 for r in rows):
        return repr([r[0] for r in rows])
    return repr([tuple(r) for r in rows])


def _tables(names: list[str]) -> str:
    return f"the {names[0]} table" if len(names) == 1 else "the " + ", ".join(names[:-1]) + f" and {names[-1]} tables"


def _summary(rows: list[list[Any]]) -> str:
    if len(rows) == 1 and len(rows[0]) == 1:
        return f"The query returned {rows[0][0]}"
    return f"The query returned {len(rows)} row{'s' if len(rows) != 1 else ''}"


def expert_reply(p: DbPayload, history: list[Turn]) -> str:
    """The next reply for a task with payload ``p``: run the gold statement, then answer with its rows."""
    replies = sum(1 for t in history if t.role == "assistant")
    if replies == 0:
        if p.kind == "select":
            thought = f"I need {p.need}; I will query {_tables(p.tables)}."
        else:
            thought = f"I need to {p.need}; one {p.kind.upper()} on {_tables(p.tables)} does it."
        return f"Thought: {thought}\nAction: Operation\n```sql\n{p.sql};\n```"
    if p.kind == "select":
        return (f"Thought: {_summary(p.answer)}, so that is the answer.\n"
                f"Action: Answer\nFinal Answer: {render_answer(p.answer)}")
    return "Thought: The change is done.\nAction: Answer\nFinal Answer: []"


def wrong_reply(p: DbPayload) -> str:
    """Answers at once, with nothing queried or changed: wrong for every task (gold answers are never empty and
    every change alters its table)."""
    answer = "[]" if p.kind == "select" else "['done']"
    return f"Thought: I will answer right away without looking at the database.\nAction: Answer\nFinal Answer: {answer}"
