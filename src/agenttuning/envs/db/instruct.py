"""Self-instruct for the ``db`` environment: the teacher's prompt, reading its drafts, and turning a draft into a task.

The family-specific half of :mod:`agenttuning.stages.instruct` (which calls the teacher, runs the expert and the
wrong answer through the real environment, and deduplicates). Here:

- :func:`instruct_prompt`: what the teacher is shown: the environment's description, the database schema, the task
  format (a JSON array of drafts) and a few seed tasks with their gold SQL.
- :func:`read_drafts`: the teacher's reply is adversarial text, so it is read strictly: at most
  :data:`MAX_REPLY_CHARS` characters, ``json.loads`` only (never ``eval``), either the whole reply or the body of one
  ```` ```json ```` fence, a JSON array (or ``{"tasks": [...]}``) of at most ``limit`` objects, each fitting
  :class:`DbDraft` exactly (no extra keys, no type coercion) and within the field bounds.
- :func:`draft_task`: runs the draft's gold SQL on a private copy of the database under the environment's own guards
  (:mod:`.guards`: the authorizer, SQLite limits, bounded ``printf``, growth caps, a step and time budget) and
  computes the gold the way :mod:`.tasks` does: a question keeps 1 to :data:`~.tasks.MAX_ROWS` rows with no NULL and
  not a bare zero count, and must give the same rows when SQLite reads tables in reverse order
  (``PRAGMA reverse_unordered_selects``: a tie at an ``ORDER BY ... LIMIT`` boundary, or a ``LIMIT`` without
  ``ORDER BY``, changes them, so the answer would be ambiguous); a change must alter at least one row of exactly one
  table, whose hash after the change is the gold (:func:`.grading.table_hash`, what the episode compares).

A kept draft becomes a :class:`~agenttuning.schema.Task` shaped like a derived one (payload validated by
:class:`.payload.DbPayload`), id ``db-instruct-<sha256 of instruction and payload>``: the same draft always gets
the same id.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.envs.db import data, grading
from agenttuning.envs.db.env import pristine_hash, text_problem
from agenttuning.envs.db.guards import STEP_BUDGET, TIME_LIMIT_S, Budget, first_statement, install_guards, take_refusal
from agenttuning.envs.db.payload import DbPayload, Kind
from agenttuning.envs.db.tasks import MAX_ROWS
from agenttuning.envs.instruct import MAX_REPLY_CHARS, Rejected
from agenttuning.envs.instruct import read_drafts as shared_read_drafts
from agenttuning.schema import Task, Turn

if TYPE_CHECKING:
    from agenttuning.envs.db.definition import DbDefinition

MAX_INSTRUCTION_CHARS = 500
MAX_SQL_CHARS = 2_000
MAX_NEED_CHARS = 200
TEMPLATE = "instruct"  # the payload's template name for every self-instructed task
CAPS = {"instruction": MAX_INSTRUCTION_CHARS, "sql": MAX_SQL_CHARS, "need": MAX_NEED_CHARS}
#: what :func:`draft_task` can reject a draft for, in the order it checks (running the reference solution)
REASONS = ("sql_error", "kind_mismatch", "empty_result", "too_many_rows", "unusable_result", "ambiguous_result",
           "no_change", "no_table")

_CHANGE_VERB = re.compile(r"\s*(insert|replace|update|delete)\b", re.IGNORECASE)
_SELECT_VERB = re.compile(r"\s*(select|with|values)\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DbDraft(BaseModel):
    """One task as the teacher writes it: a question with the SQL that answers it (``kind`` "select"), or a change
    instruction with the one INSERT, UPDATE or DELETE that makes it. Strict: unknown keys and wrong types fail."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Kind
    instruction: str = Field(min_length=1)
    sql: str = Field(min_length=1)
    ordered: bool = False  # a question whose answer order counts (its SQL must have ORDER BY)
    need: str | None = None  # what the expert says it needs, e.g. "the capital of France"


Draft = DbDraft  # the name the stage reads


def _seed_entry(task: Task) -> dict[str, Any]:
    p = task.payload
    entry: dict[str, Any] = {"kind": p["kind"], "instruction": task.instruction, "sql": p["sql"]}
    if p.get("ordered"):
        entry["ordered"] = True
    return entry


def instruct_prompt(definition: DbDefinition, seeds: list[Task], k: int) -> list[Turn]:
    """The messages asking the teacher for ``k`` new tasks, showing ``seeds`` (derived tasks) as examples."""
    schema = "\n".join(f"- {table}({columns})" for table, columns in data.SCHEMA.items())
    examples = "\n".join(json.dumps(_seed_entry(t), ensure_ascii=False) for t in seeds)
    system = (
        "You write new tasks for an agent environment. Each task must be checkable: its SQL is run on the real "
        "database, and a task whose SQL fails or gives no answer is thrown away."
    )
    user = f"""Environment: {definition.description}
The agent sees the task and the tables below, and works with SQLite statements.

Database tables:
{schema}

Task format: a JSON object with these keys and nothing else:
- "kind": "select" for a question; "insert", "update" or "delete" for a change to the data.
- "instruction": the question, or the change to make, in plain English (at most {MAX_INSTRUCTION_CHARS} characters). \
Name every value the agent needs (numbers, names, codes).
- "sql": one SQLite statement (at most {MAX_SQL_CHARS} characters): the SELECT that answers the question, or the \
INSERT, UPDATE or DELETE that makes the change.
- "ordered" (optional, questions only): true when the answer's order matters (the SQL has ORDER BY).
- "need" (optional): a few words on what is needed, e.g. "the capital of France".
A question's SQL must return 1 to {MAX_ROWS} rows with no NULL; if it uses LIMIT, its ORDER BY must leave no tie. \
A change must alter at least one row of one table.

Examples:
{examples}

Write {k} new tasks, different from the examples and from each other, about other countries, cities, languages \
or currencies. Reply with a JSON array of {k} task objects and nothing else."""
    return [Turn(role="system", content=system), Turn(role="user", content=user)]


def read_drafts(text: str, limit: int) -> tuple[list[DbDraft | Rejected], Rejected | None]:
    """The teacher's reply as drafts (:func:`agenttuning.envs.instruct.read_drafts` with :class:`DbDraft`)."""
    return shared_read_drafts(text, limit, DbDraft, CAPS)


def _plain(value: Any) -> bool:
    """A cell a gold answer can hold: not NULL, not a blob, not a non-finite float."""
    if value is None or isinstance(value, bytes):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _guarded(*, reverse: bool = False) -> tuple[sqlite3.Connection, Any]:
    conn = data.open_copy()
    if reverse:  # set before the guards, whose authorizer refuses this PRAGMA
        conn.execute("PRAGMA reverse_unordered_selects = ON")
    return conn, install_guards(conn)


def _execute(conn: sqlite3.Connection, sql: str) -> tuple[sqlite3.Cursor | None, list[tuple] | None, str]:
    """Run ``sql`` under the episode's step and time budget: (cursor, first rows or None for a change, error)."""
    budget = Budget(STEP_BUDGET, TIME_LIMIT_S)
    budget.install(conn)
    take_refusal()
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(MAX_ROWS + 1) if cur.description is not None else None
        return cur, rows, ""
    except Exception as e:  # noqa: BLE001 - the teacher's SQL failing is a rejection, not a crash
        refused = take_refusal()
        return None, None, "ran too long" if budget.exceeded else str(refused or e)[:200]
    finally:
        conn.set_progress_handler(None, 0)


def _tables_named(sql: str) -> list[str]:
    words = {w.lower() for w in _WORD.findall(sql)}
    return [t for t in data.SCHEMA if t in words]


def _select_gold(sql: str, ordered: bool) -> dict[str, Any] | Rejected:
    rows_by_order = []
    for reverse in (False, True):
        conn, authorizer = _guarded(reverse=reverse)
        try:
            cur, rows, error = _execute(conn, sql)
            if error:
                return Rejected(reason="sql_error", detail=error)
            if rows is None or authorizer.wrote:
                return Rejected(reason="kind_mismatch", detail="a question's SQL must only read")
            rows_by_order.append([list(r) for r in rows])
        finally:
            conn.close()
    rows = rows_by_order[0]
    if not rows or (len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] == 0):
        return Rejected(reason="empty_result", detail="no rows" if not rows else "a bare count of 0")
    if len(rows) > MAX_ROWS:
        return Rejected(reason="too_many_rows", detail=f"more than {MAX_ROWS} rows")
    if not all(_plain(v) for r in rows for v in r):
        return Rejected(reason="unusable_result", detail="NULL, blob or non-finite value in the answer")
    other = rows_by_order[1]
    same = rows == other if ordered else sorted(map(repr, rows)) == sorted(map(repr, other))
    if not same:
        return Rejected(reason="ambiguous_result", detail="the rows depend on the order SQLite reads the tables")
    return {"answer": rows, "table": None, "table_hash": None}


def _change_gold(sql: str, kind: str) -> dict[str, Any] | Rejected:
    verb = _CHANGE_VERB.match(sql)
    if verb is None or {"replace": "insert"}.get(verb.group(1).lower(), verb.group(1).lower()) != kind:
        return Rejected(reason="kind_mismatch", detail=f"a {kind} task's SQL must be one {kind.upper()} statement")
    conn, _ = _guarded()
    try:
        cur, rows, error = _execute(conn, sql)
        if error:
            return Rejected(reason="sql_error", detail=error)
        if rows is not None:
            return Rejected(reason="kind_mismatch", detail="a change's SQL returned rows")
        assert cur is not None
        changed_rows = cur.rowcount
        changed = {}
        for table in data.SCHEMA:
            after = grading.table_hash(conn, table)
            if after != pristine_hash(table):
                changed[table] = after
    finally:
        conn.close()
    if changed_rows < 1 or not changed:
        return Rejected(reason="no_change", detail="the statement leaves every table as it was")
    if len(changed) > 1:
        return Rejected(reason="kind_mismatch", detail=f"changes several tables: {sorted(changed)}")
    ((table, table_hash),) = changed.items()
    return {"answer": [], "table": table, "table_hash": table_hash, "rows_affected": changed_rows}


def draft_task(definition: DbDefinition, draft: DbDraft) -> Task | Rejected:
    """The task a draft makes once its gold SQL has run (see the module docs), or why it cannot be one."""
    sql = draft.sql.strip().rstrip(";").strip()
    problem = text_problem(sql) or text_problem(draft.instruction) or text_problem(draft.need or "")
    if problem:
        return Rejected(reason="unparsable", detail=problem)
    if not sql or first_statement(sql + ";").rstrip(";").strip() != sql:
        return Rejected(reason="sql_error", detail="not exactly one SQL statement")
    if draft.kind == "select":
        if _SELECT_VERB.match(sql) is None:
            return Rejected(reason="kind_mismatch", detail="a question's SQL must be a SELECT")
        ordered = draft.ordered and "order by" in " ".join(sql.lower().split())
        gold = _select_gold(sql, ordered)
    else:
        ordered = False
        gold = _change_gold(sql, draft.kind)
    if isinstance(gold, Rejected):
        return gold
    tables = [gold["table"]] if gold["table"] else _tables_named(sql)
    if not tables:
        return Rejected(reason="no_table", detail="the SQL reads no table of the database")
    need = draft.need or ("the answer to this question" if draft.kind == "select" else "make the requested change")
    payload: dict[str, Any] = {"template": TEMPLATE, "entity": "", "kind": draft.kind, "sql": sql, "ordered": ordered,
                               "need": need, "tables": tables, **gold}
    digest = hashlib.sha256(json.dumps({"instruction": draft.instruction, "payload": payload}, sort_keys=True,
                                       ensure_ascii=False).encode()).hexdigest()[:16]
    payload["entity"] = f"instruct:{digest}"
    DbPayload.model_validate(payload)  # the same model the episode validates at reset
    return Task(id=f"db-instruct-{digest}", env=definition.id, split="train", instruction=draft.instruction,
                payload=payload)


def solution_key(task: Task) -> str:
    """A task's gold SQL, normalised (lower case, whitespace collapsed, no trailing ``;``): two tasks with the same
    key ask for the same thing, however differently worded."""
    return " ".join(str(task.payload.get("sql", "")).lower().split()).rstrip(";").strip()
