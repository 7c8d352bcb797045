"""Derive the ``db`` tasks: run every template's gold SQL and keep the questions with one clear answer.

Splits are assigned per *entity* (a country, sub-region, currency or language) by a SHA-256 of its key, so a test
question never names something a training question names. Selection follows the rule every family shares
(:func:`agenttuning.envs.derivation.tasks_from_candidates`): per template at most :data:`CAP` questions in each
split, in the order of a SHA-256 of their text, none whose text is in both splits; so the list is the same on every
call and machine (for the same package versions, which :func:`agenttuning.envs.db.data.cache_key` tracks).

A question is kept only when its gold answer is useful and unambiguous: 1 to :data:`MAX_ROWS` rows, no NULL, not a
bare zero count, and no tie at an ``ORDER BY ... LIMIT`` boundary. A change is kept only when it alters at least one
row; its gold is the hash of the target table after the change, computed inside a savepoint that is rolled back.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from agenttuning.envs import derivation
from agenttuning.envs.db import data, grading
from agenttuning.envs.db.templates import TEMPLATE_SOURCES, Candidate, World
from agenttuning.schema import Task

TEST_PERCENT = 20  # share of entities in the test split
CAP = {"train": 26, "test": 7}  # questions kept per template and split
MAX_ROWS = 20  # longer gold answers are dropped: the agent sees at most 50 rows and must repeat them all


class _Scopes:
    """Digest sums of a table, in total and per value of one column (see :mod:`.grading`)."""

    def __init__(self, conn: sqlite3.Connection, table: str, column: str):
        at = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")].index(column)
        groups: dict[Any, list[tuple]] = defaultdict(list)
        for row in conn.execute(f"SELECT * FROM {table}"):
            groups[row[at]].append(row)
        self.parts = {value: grading.digest_sum(rows) for value, rows in groups.items()}
        self.total = sum(total for total, _ in self.parts.values())
        self.count = sum(count for _, count in self.parts.values())


def _select_payload(conn: sqlite3.Connection, c: Candidate) -> dict[str, Any] | None:
    rows = conn.execute(c.sql).fetchall()
    if not 1 <= len(rows) <= MAX_ROWS or any(v is None for r in rows for v in r):
        return None
    if len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] == 0:
        return None  # "how many ... ?" with answer 0 says nothing about the data
    if c.tie_sql is not None:
        keys = [r[0] for r in conn.execute(c.tie_sql)]
        if None in keys or len(set(keys)) != len(keys):
            return None
    return {"answer": [list(r) for r in rows], "table": None, "table_hash": None}


def _change_payload(conn: sqlite3.Connection, c: Candidate, scopes: dict[tuple[str, str], _Scopes]) -> dict | None:
    assert c.scope is not None
    table, column, value = c.scope
    if (table, column) not in scopes:
        scopes[(table, column)] = _Scopes(conn, table, column)
    s = scopes[(table, column)]
    conn.execute("SAVEPOINT gold")
    try:
        changed = conn.execute(c.sql).rowcount
        after = grading.digest_sum(conn.execute(f"SELECT * FROM {table} WHERE {column} = ?", (value,)))
    finally:
        conn.execute("ROLLBACK TO gold")
        conn.execute("RELEASE gold")
    before = s.parts.get(value, (0, 0))
    if changed < 1 or after == before:  # a change that leaves the rows as they were cannot be graded
        return None
    table_hash = grading.combine(s.total - before[0] + after[0], s.count - before[1] + after[1])
    return {"answer": [], "table": table, "table_hash": table_hash, "rows_affected": changed}


def derive(conn: sqlite3.Connection, env_id: str) -> dict[str, list[Task]]:
    """All tasks of both splits from a private database copy ``conn`` (left unchanged)."""
    world = World(conn)
    by_split: dict[str, list[Candidate]] = {"train": [], "test": []}
    for source in TEMPLATE_SOURCES:
        for c in source(world):
            by_split[derivation.split_of("db-split", c.entity, TEST_PERCENT)].append(c)
    scopes: dict[tuple[str, str], _Scopes] = {}

    def payload(c: Candidate) -> dict[str, Any] | None:
        """The task payload of a candidate whose gold is useful (see the module docs), else None."""
        gold = _select_payload(conn, c) if c.kind == "select" else _change_payload(conn, c, scopes)
        if gold is None:
            return None
        return {"template": c.template, "entity": c.entity, "kind": c.kind, "sql": c.sql, "ordered": c.ordered,
                "need": c.need, "tables": list(c.tables), **gold}

    return derivation.tasks_from_candidates(by_split, family="db", env_id=env_id, cap=CAP, payload=payload)


def derive_all(env_id: str) -> dict[str, list[Task]]:
    conn = data.open_copy()
    try:
        return derive(conn, env_id)
    finally:
        conn.close()
