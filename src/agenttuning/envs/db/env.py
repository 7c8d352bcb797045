"""One ``db`` episode: a private in-memory copy of the database, the two actions, and the guards around them.

Actions (AgentBench's database task format): ``Operation`` followed by a fenced ```` ```sql ```` block runs the
block's first statement and shows its result; ``Answer`` followed by ``Final Answer: [...]`` ends the episode and is
graded (:mod:`.grading`). Anything else (including text SQLite cannot take: a NUL byte, a lone surrogate) gets the
invalid-action feedback and uses up a turn.

Guards, because the SQL comes from a model: each episode works on its own copy (nothing leaks between episodes or
back into the shared image), and :mod:`.guards` bounds what a statement may reach and how much time and memory it
may take; grading a change hashes the table under a budget of its own. An observation shows at most
:data:`MAX_ROWS_SHOWN` rows and :data:`MAX_OBSERVATION_CHARS` characters. :meth:`DbEnv.interrupt` stops a running
statement or grading from any thread.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.db import data, grading
from agenttuning.envs.db.guards import (  # noqa: F401 - re-exported: the guards' names as this module had them
    MAX_SQL_CHARS,
    STEP_BUDGET,
    TIME_LIMIT_S,
    TOO_LONG,
    Authorizer,
    Budget,
    first_statement,
    guarded_copy,
    take_refusal,
)
from agenttuning.envs.db.payload import DbPayload
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.db.definition import DbDefinition

MAX_ROWS_SHOWN = 50
MAX_OBSERVATION_CHARS = 4000
GRADE_STEP_BUDGET = STEP_BUDGET * 10  # hashing the largest table takes ~2% of it
GRADE_TIME_LIMIT_S = TIME_LIMIT_S * 10
HASH_LOCK_WAIT_S = 2.0  # the longest one grading waits for the others before hashing alongside them
HASH_HOLD_MAX_S = 0.5  # the longest one grading holds the hashing lock (the largest table takes ~0.13 s)

_WORD = re.compile(r"[*_`#\s]*([A-Za-z]+(?:\s+answer)?)", re.IGNORECASE)
_SQL_BLOCK = re.compile(r"```[ \t]*(?:sqlite3|sqlite|sql)?[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)

_pristine: dict[str, str] = {}
_pristine_lock = threading.Lock()
# Hashing a whole table is Python-bound and fetches row by row, releasing the GIL at every row: threads hashing at
# once hand the GIL back and forth and together run several times slower than one after another. So one at a time;
# but only as a speed-up, bounded both ways (DbEnv._table_matches): a holder lets go after HASH_HOLD_MAX_S, and a
# waiter gives up after HASH_LOCK_WAIT_S, so an agent's slow table never stalls other episodes for long.
_hash_lock = threading.Lock()
_HASH_BATCH = 2000  # rows per fetch (~10 ms of hashing): the hold time is checked between batches


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


def run_statement(conn: sqlite3.Connection, sql: str, *, steps: int = STEP_BUDGET,
                  stop: threading.Event | None = None) -> tuple[str, bool]:
    """Execute one statement under the budget; return (observation, failed). Never raises."""
    budget = Budget(steps, TIME_LIMIT_S, stop)
    budget.install(conn)
    take_refusal()
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
        if budget.exceeded or (stop is not None and stop.is_set()):
            return TOO_LONG, True
        refused = take_refusal()
        return f"Error: {refused or e}"[:MAX_OBSERVATION_CHARS], True
    finally:
        conn.set_progress_handler(None, 0)


def text_problem(text: str) -> str | None:
    """Why SQLite cannot take ``text`` (a NUL byte, or a lone surrogate that has no UTF-8), or None."""
    if "\x00" in text:
        return "the action contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "the action contains a lone surrogate (text that is not valid Unicode)"
    return None


class DbEnv(EpisodeEnv[DbPayload]):
    """One episode of the ``db`` environment (create one per episode; used from one thread at a time).

    :class:`EpisodeEnv` owns the bookkeeping: every action, valid or not, uses a turn; when
    :attr:`DbDefinition.max_turns` turns pass without an answer the episode is truncated with reward 0 (a change made
    but never confirmed with ``Answer`` is not graded); ``close()`` never runs under a running statement.
    """

    definition: DbDefinition

    def __init__(self, definition: DbDefinition):
        super().__init__(definition)
        self._conn: sqlite3.Connection | None = None
        self._authorizer: Authorizer | None = None
        self._stop = threading.Event()  # set by interrupt(); every budget of this episode checks it
        self._conn_lock = threading.Lock()  # orders interrupt() against the connection being replaced or closed

    def start(self, task: Task, payload: DbPayload) -> str:
        conn, authorizer = guarded_copy()
        with self._conn_lock:
            self._conn, self._authorizer = conn, authorizer
        self._stop.clear()
        return self.definition.observation(task.instruction)

    def interrupt(self) -> None:
        """Stop the running statement or grading (from any thread): the step returns the too-long feedback."""
        self._stop.set()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.interrupt()  # the one sqlite3 call that is safe from another thread

    def act(self, action: str) -> StepResult:
        problem = text_problem(action)
        if problem is not None:
            return self.invalid(problem)
        m = _WORD.match(action)
        word = " ".join(m.group(1).lower().split()) if m else ""
        if word == "operation":
            block = _SQL_BLOCK.search(action)
            if block is None:
                return self.invalid("an Operation needs its SQL statement in a ```sql ... ``` block")
            if len(block.group(1)) > MAX_SQL_CHARS:
                return self.invalid(f"the ```sql``` block is longer than {MAX_SQL_CHARS} characters")
            sql = first_statement(block.group(1))
            if not sql.strip(" ;\n\t"):
                return self.invalid("the ```sql``` block is empty")
            observation, failed = self.run_sql(sql)
            return StepResult(observation, info={"sql": sql, "error": failed})
        if word in ("answer", "final answer"):
            text = grading.answer_text(action)
            if text is None:
                return self.invalid("an Answer must give 'Final Answer: [...]'")
            return self._grade(text)
        shown = action.splitlines()[0][:40] if action else ""
        return self.invalid(f"unknown action {shown!r}; use 'Operation' with a ```sql``` block or 'Answer'")

    def run_sql(self, sql: str) -> tuple[str, bool]:
        """Run the agent's statement on the episode's database: (observation, failed); never raises. A family
        built on this one (:mod:`agenttuning.envs.agentbench.db`) overrides it, and :meth:`_grade`."""
        assert self._conn is not None
        return run_statement(self._conn, sql, stop=self._stop)

    def _grade(self, text: str) -> StepResult:
        assert self._conn is not None
        gold = self.payload
        given = grading.parse_answer(text)
        if gold.kind == "select":
            success = grading.answers_match(given, grading.gold_rows(gold.answer), ordered=gold.ordered)
        else:
            assert gold.table is not None and gold.table_hash is not None  # DbPayload checks it for a change
            if self._authorizer is not None and not self._authorizer.wrote:
                success = pristine_hash(gold.table) == gold.table_hash
            else:
                success = self._table_matches(gold.table, gold.table_hash)
        return self.final(1.0 if success else 0.0, success, answer=given)

    def _table_matches(self, table: str, want: str) -> bool:
        """Hash the agent's table under a budget: it may be a view over a runaway query, or be gone."""
        assert self._conn is not None
        Budget(GRADE_STEP_BUDGET, GRADE_TIME_LIMIT_S, self._stop).install(self._conn)
        total = count = 0
        try:
            # main. explicitly: a TEMP table of the same name would otherwise shadow the real one
            cur = self._conn.execute(f'SELECT * FROM main."{table}"')
            # One grading hashes at a time (see _hash_lock), holding the lock for the whole table, as long as that
            # is quick. A slow table (an agent's view over a runaway query) lets go after HASH_HOLD_MAX_S and finishes
            # without it; a grading waits at most HASH_LOCK_WAIT_S in all, then hashes without the lock. So no
            # table stalls another episode by more than about HASH_HOLD_MAX_S, and normal gradings never thrash.
            wait_left, locked, held_since = HASH_LOCK_WAIT_S, False, 0.0
            try:
                while True:
                    if not locked and wait_left > 0:
                        t0 = time.monotonic()
                        locked = _hash_lock.acquire(timeout=wait_left)
                        held_since = time.monotonic()
                        wait_left = 0.0 if locked else max(0.0, wait_left - (held_since - t0))
                    rows = cur.fetchmany(_HASH_BATCH)
                    part, n = grading.digest_sum(rows)
                    if locked and time.monotonic() - held_since > HASH_HOLD_MAX_S:
                        _hash_lock.release()
                        locked = False  # and never again: wait_left is 0
                    if not rows:
                        return grading.combine(total, count) == want
                    total, count = total + part, count + n
            finally:
                if locked:
                    _hash_lock.release()
        except Exception:  # noqa: BLE001 - a dropped, broken or runaway table simply fails the task
            return False
        finally:
            self._conn.set_progress_handler(None, 0)

    def release(self) -> None:
        """Free the connection (the base calls this only when no statement is running)."""
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
