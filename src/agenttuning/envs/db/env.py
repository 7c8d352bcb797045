"""One ``db`` episode: a private in-memory copy of the database, the two actions, and the guards around them.

Actions (AgentBench's database task format): ``Operation`` followed by a fenced ```` ```sql ```` block runs the
block's first statement and shows its result; ``Answer`` followed by ``Final Answer: [...]`` ends the episode and is
graded (:mod:`.grading`). Anything else gets the invalid-action feedback and uses up a turn.

Guards, because the SQL comes from a model: each episode works on its own copy (nothing leaks between episodes or
back into the shared image); an authorizer refuses ``ATTACH`` (which ``VACUUM INTO`` also needs, so no file can be
written), ``load_extension`` and every ``PRAGMA`` but a few read-only ones; a progress handler stops a statement after
:data:`STEP_BUDGET` virtual-machine steps or :data:`TIME_LIMIT_S` seconds; string/blob sizes are capped; and an
observation shows at most :data:`MAX_ROWS_SHOWN` rows and :data:`MAX_OBSERVATION_CHARS` characters.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from agenttuning.envs.base import Environment, StepResult, truncate_at_budget
from agenttuning.envs.db import data, grading
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.db.definition import DbDefinition

MAX_ROWS_SHOWN = 50
MAX_OBSERVATION_CHARS = 4000
MAX_SQL_CHARS = 20_000
STEP_BUDGET = 20_000_000  # VM steps per statement; the heaviest gold query needs well under 1% of it
TIME_LIMIT_S = 1.0  # backstop for steps that are slow (large sorts, long strings)
_CHECK_EVERY = 1000  # VM steps between progress-handler calls

_SAFE_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
_DENIED_FUNCTIONS = frozenset({"load_extension"})
_WORD = re.compile(r"[*_`#\s]*([A-Za-z]+(?:\s+answer)?)", re.IGNORECASE)
_SQL_BLOCK = re.compile(r"```[ \t]*(?:sqlite3|sqlite|sql)?[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)

_READ_ONLY_ACTIONS = frozenset(
    getattr(sqlite3, n)
    for n in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE", "SQLITE_PRAGMA")
    if hasattr(sqlite3, n)
)


class _Authorizer:
    """SQLite authorizer: refuses what could reach outside the copy, and notes whether anything may have written.

    ``wrote`` stays False only while every statement prepared so far was read-only, which lets grading reuse the
    pristine table's hash instead of hashing the table again (a conservative flag: a write that failed counts).
    """

    def __init__(self) -> None:
        self.wrote = False

    def __call__(self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None) -> int:
        if action not in _READ_ONLY_ACTIONS:
            self.wrote = True
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _SAFE_PRAGMAS:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK


def guarded_copy() -> tuple[sqlite3.Connection, _Authorizer]:
    """A fresh private copy of the database with every guard installed."""
    conn = data.open_copy()
    authorizer = _Authorizer()
    conn.set_authorizer(authorizer)
    for name, value in (("SQLITE_LIMIT_ATTACHED", 0), ("SQLITE_LIMIT_LENGTH", 1_000_000),
                        ("SQLITE_LIMIT_SQL_LENGTH", MAX_SQL_CHARS)):
        if hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    return conn, authorizer


_pristine: dict[str, str] = {}
_pristine_lock = threading.Lock()
# Hashing a whole table is Python-bound and fetches row by row, releasing the GIL at every row: threads hashing at
# once hand the GIL back and forth and together run several times slower than one after another. One at a time.
_hash_lock = threading.Lock()


def pristine_hash(table: str) -> str:
    """The hash of ``table`` in the unchanged database (computed once per process)."""
    with _pristine_lock:
        if table not in _pristine:
            conn = data.open_copy()
            try:
                _pristine[table] = grading.table_hash(conn, table)
            finally:
                conn.close()
        return _pristine[table]


class _Budget:
    """A progress handler that aborts the running statement once its step or time budget is spent."""

    def __init__(self, steps: int, seconds: float):
        self.calls_left, self.deadline, self.exceeded = steps // _CHECK_EVERY, time.monotonic() + seconds, False

    def __call__(self) -> int:
        self.calls_left -= 1
        if self.calls_left < 0 or time.monotonic() > self.deadline:
            self.exceeded = True
            return 1
        return 0


def first_statement(sql: str) -> str:
    """The first complete statement of ``sql`` (the rest is ignored, as the prompt says)."""
    sql = sql.strip()
    for i, ch in enumerate(sql):
        if ch == ";" and sqlite3.complete_statement(sql[: i + 1]):
            return sql[: i + 1]
    return sql


def run_statement(conn: sqlite3.Connection, sql: str, *, steps: int = STEP_BUDGET) -> tuple[str, bool]:
    """Execute one statement under the budget; return (observation, failed). Never raises."""
    budget = _Budget(steps, TIME_LIMIT_S)
    conn.set_progress_handler(budget, _CHECK_EVERY)
    try:
        cur = conn.execute(sql)
        if cur.description is None:
            return f"Query OK, {max(cur.rowcount, 0)} rows affected.", False
        rows = cur.fetchmany(MAX_ROWS_SHOWN + 1)
        text = repr(rows[:MAX_ROWS_SHOWN])
        if len(text) > MAX_OBSERVATION_CHARS:
            text = text[:MAX_OBSERVATION_CHARS] + " ... (output cut: too long)"
        if len(rows) > MAX_ROWS_SHOWN:
            text += f"\n(only the first {MAX_ROWS_SHOWN} rows are shown)"
        return text, False
    except Exception as e:  # noqa: BLE001 - any failure of the agent's SQL is feedback, not a crash
        if budget.exceeded:
            return ("Error: the query was stopped because it ran too long. "
                    "Write a simpler query (add conditions, avoid unbounded recursion or huge joins)."), True
        return f"Error: {e}", True
    finally:
        conn.set_progress_handler(None, 0)


class DbEnv(Environment):
    """One episode of the ``db`` environment (create one per episode; single-threaded).

    Every action, valid or not, uses a turn; when :attr:`DbDefinition.max_turns` turns pass without an answer the
    episode is truncated with reward 0 (a change made but never confirmed with ``Answer`` is not graded).
    """

    def __init__(self, definition: DbDefinition):
        self._definition = definition
        self._conn: sqlite3.Connection | None = None
        self._authorizer: _Authorizer | None = None
        self._task: Task | None = None
        self._turns = 0
        self._done = True

    def reset(self, task: Task) -> str:
        if task.env != self._definition.id:
            raise ValueError(f"task {task.id} belongs to {task.env}, not {self._definition.id}")
        self.close()
        self._conn, self._authorizer = guarded_copy()
        self._task, self._turns, self._done = task, 0, False
        return self._definition.observation(task.instruction)

    def step(self, action: str) -> StepResult:
        if self._done or self._conn is None or self._task is None:
            raise RuntimeError("the episode is over or was never started: call reset(task) first")
        self._turns += 1
        result = truncate_at_budget(self._act(action.strip()), self._turns, self._definition.max_turns)
        self._done = result.terminated or result.truncated
        return result

    def _act(self, action: str) -> StepResult:
        m = _WORD.match(action)
        word = " ".join(m.group(1).lower().split()) if m else ""
        if word == "operation":
            block = _SQL_BLOCK.search(action)
            if block is None:
                return self._invalid("an Operation needs its SQL statement in a ```sql ... ``` block")
            if len(block.group(1)) > MAX_SQL_CHARS:
                return self._invalid(f"the ```sql``` block is longer than {MAX_SQL_CHARS} characters")
            sql = first_statement(block.group(1))
            if not sql.strip(" ;\n\t"):
                return self._invalid("the ```sql``` block is empty")
            assert self._conn is not None
            observation, failed = run_statement(self._conn, sql)
            return StepResult(observation, info={"sql": sql, "error": failed})
        if word in ("answer", "final answer"):
            text = grading.answer_text(action)
            if text is None:
                return self._invalid("an Answer must give 'Final Answer: [...]'")
            return self._grade(text)
        shown = action.splitlines()[0][:40] if action else ""
        return self._invalid(f"unknown action {shown!r}; use 'Operation' with a ```sql``` block or 'Answer'")

    def _invalid(self, reason: str) -> StepResult:
        return StepResult(self._definition.invalid_action(reason), 0.0, info={"invalid": True, "reason": reason})

    def _grade(self, text: str) -> StepResult:
        assert self._task is not None and self._conn is not None
        payload: dict[str, Any] = self._task.payload
        given = grading.parse_answer(text)
        if payload["kind"] == "select":
            gold = grading.gold_rows(payload["answer"])
            success = grading.answers_match(given, gold, ordered=bool(payload.get("ordered")))
        elif self._authorizer is not None and not self._authorizer.wrote:
            success = pristine_hash(payload["table"]) == payload["table_hash"]
        else:
            # the agent may have replaced the table by a runaway view: hash under a (generous) budget too
            budget = _Budget(STEP_BUDGET * 10, TIME_LIMIT_S * 10)
            self._conn.set_progress_handler(budget, _CHECK_EVERY)
            try:
                with _hash_lock:
                    success = grading.table_hash(self._conn, payload["table"]) == payload["table_hash"]
            except Exception:  # noqa: BLE001 - a dropped or broken table simply fails the task
                success = False
            finally:
                self._conn.set_progress_handler(None, 0)
        reward = 1.0 if success else 0.0
        # the final observation does not say whether the answer was right: it is never shown to a policy anyway
        info = {"success": success, "answer": given}
        return StepResult("Answer received; the task is over.", reward, terminated=True, info=info)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._done = True
