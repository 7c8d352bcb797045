"""The guards around the agent's SQL: what a statement may touch, and how much time and memory it may take.

The SQL comes from a model, so it is adversarial data. Three kinds of guard, because each closes a different gap:

- *Reach*: an authorizer refuses ``ATTACH`` (which ``VACUUM INTO`` also needs, so no file can be written),
  ``load_extension`` and every ``PRAGMA`` but a few read-only ones.
- *Time*: a progress handler stops a statement after :data:`STEP_BUDGET` virtual-machine steps, its wall-clock
  deadline, or a stop event another thread sets (``DbEnv.interrupt``). It runs only *between* VM steps, so a
  single built-in function call escapes it: SQLite's own limits bound those calls instead. Measured on SQLite
  3.40.1 before these limits: ``LIKE``/``GLOB`` of a 40 kB pattern over an 800 kB string took 46 s and 38 s
  (O(string x pattern): now 100 kB x 1 kB), and ``printf('%.*c', 2147483647, 'x')`` 9.5 s, because the ``%c``
  precision loop runs to the end after the result has already failed the length check. No limit covers that loop,
  so ``printf`` and ``format`` are replaced by a wrapper that refuses widths and precisions over
  :data:`MAX_STRING_BYTES` and hands everything else to SQLite's own ``printf`` on a scratch connection.
- *Memory*: strings and blobs are capped at :data:`MAX_STRING_BYTES`, and the episode's database may grow by at most
  :data:`MAX_GROWTH_BYTES` (``max_page_count`` on ``main`` and ``temp``), so inserting big blobs row by row fails
  with "database or disk is full" instead of filling the machine's memory.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from typing import Any

from agenttuning.envs.db import data

MAX_SQL_CHARS = 20_000
MAX_STRING_BYTES = 50_000  # largest string or blob a statement may build (the largest stored value is 65 chars)
MAX_LIKE_PATTERN = 1_000  # LIKE/GLOB cost grows with string x pattern length
MAX_GROWTH_BYTES = 16 << 20  # how much an episode may add to its copy of the database (and to its temp tables)
STEP_BUDGET = 20_000_000  # VM steps per statement; the heaviest gold query needs well under 1% of it
TIME_LIMIT_S = 1.0  # wall-clock deadline of one statement
CHECK_EVERY = 1000  # VM steps between progress-handler calls
TOO_LONG = ("Error: the query was stopped because it ran too long. "
            "Write a simpler query (add conditions, avoid unbounded recursion or huge joins).")

# SQLite's run-time limits (sqlite3_limit); each bounds one way a statement's cost can grow without VM steps.
LIMITS = {
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_LENGTH": MAX_STRING_BYTES,
    "SQLITE_LIMIT_SQL_LENGTH": MAX_SQL_CHARS,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": MAX_LIKE_PATTERN,
    "SQLITE_LIMIT_EXPR_DEPTH": 100,  # the parser and code generator recurse on nesting
    "SQLITE_LIMIT_COMPOUND_SELECT": 50,
    "SQLITE_LIMIT_FUNCTION_ARG": 32,
    "SQLITE_LIMIT_COLUMN": 200,
    "SQLITE_LIMIT_VDBE_OP": 100_000,  # the size of one compiled statement
    "SQLITE_LIMIT_TRIGGER_DEPTH": 10,
    "SQLITE_LIMIT_WORKER_THREADS": 0,  # no helper threads: the episode stays on the caller's thread
}

_SAFE_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
_DENIED_FUNCTIONS = frozenset({"load_extension"})
_READ_ONLY_ACTIONS = frozenset(
    getattr(sqlite3, n)
    for n in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE", "SQLITE_PRAGMA")
    if hasattr(sqlite3, n)
)


class Authorizer:
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


# --- printf / format -------------------------------------------------------------------------------------------

# One conversion of SQLite's printf: '%', then flags, widths, precisions and length modifiers in any order (SQLite's
# parser accepts them so), then the conversion letter. Each '*' takes the next argument; each conversion but %% one.
_CONVERSION = re.compile(r"%([-+ #!0,.*\dl]*)([A-Za-z%]?)")
_DIGITS = re.compile(r"\d+")
_LEADING_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_local = threading.local()  # per thread: a scratch connection for the real printf, and the last refusal


class Refused(Exception):
    """A guarded function refused its arguments; the message is shown to the agent."""


def _as_number(value: Any) -> float:
    """How big a printf '*' argument is, read generously (a numeric string counts as its number)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and (m := _LEADING_NUMBER.match(value)):
        return float(m.group(0))
    return 0.0


def check_format(fmt: str, args: tuple[Any, ...]) -> None:
    """Raise :class:`Refused` when the widths and precisions in ``fmt`` (written or taken from ``args``) add up to
    more than :data:`MAX_STRING_BYTES`: SQLite's work grows with their sum, over all conversions, even when the
    result is refused for its length afterwards."""
    i, total = 0, 0.0
    for m in _CONVERSION.finditer(fmt):
        body, conversion = m.groups()
        total += sum(float(d) for d in _DIGITS.findall(body))
        for _ in range(body.count("*")):
            total += abs(_as_number(args[i])) if i < len(args) else 0.0
            i += 1
        if total > MAX_STRING_BYTES:
            raise Refused(f"printf widths and precisions add up to more than {MAX_STRING_BYTES} characters "
                          "(the longest string allowed)")
        if conversion not in ("%", ""):
            i += 1


def safe_printf(fmt: Any, *args: Any) -> Any:
    """SQLite's ``printf`` with widths and precisions bounded (registered as ``printf`` and ``format``)."""
    if fmt is None:
        return None
    text = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else str(fmt)
    try:
        check_format(text, args)
    except Refused as e:
        _local.refused = str(e)
        raise
    scratch = getattr(_local, "scratch", None)
    if scratch is None:  # a plain connection per thread: no data, same length limit as the episode's
        scratch = _local.scratch = sqlite3.connect(":memory:", check_same_thread=False)
        scratch.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_STRING_BYTES)
    placeholders = ", ".join("?" * (len(args) + 1))
    return scratch.execute(f"SELECT printf({placeholders})", (fmt, *args)).fetchone()[0]


def take_refusal() -> str | None:
    """The reason the last guarded function on this thread refused its arguments (cleared on reading)."""
    reason = getattr(_local, "refused", None)
    _local.refused = None
    return reason


# --- the episode's connection ------------------------------------------------------------------------------------

_caps: tuple[int, int] | None = None


def growth_caps(conn: sqlite3.Connection) -> tuple[int, int]:
    """Page caps for ``main`` and ``temp`` that let ``conn``'s database grow by at most :data:`MAX_GROWTH_BYTES`."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA main.page_count").fetchone()[0]
    return pages + MAX_GROWTH_BYTES // page_size, MAX_GROWTH_BYTES // page_size


def _page_caps(conn: sqlite3.Connection) -> tuple[int, int]:
    """Page caps for ``main`` and ``temp`` (every copy is of the same image, so measured once per process)."""
    global _caps
    if _caps is None:
        _caps = growth_caps(conn)
    return _caps


def install_guards(conn: sqlite3.Connection, page_caps: tuple[int, int] | None = None) -> Authorizer:
    """Every guard on ``conn`` (a private database the agent may change): the limits, the bounded ``printf``, the
    growth caps (``page_caps``, or :func:`growth_caps` of its database as it is now) and the authorizer, installed
    last; returns the authorizer. Whatever the episode needs to set up (tables, rows) is done before."""
    for name, value in LIMITS.items():
        if hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    for name in ("printf", "format"):
        conn.create_function(name, -1, safe_printf, deterministic=True)
    # set before the authorizer, which refuses these PRAGMAs to the agent
    main_pages, temp_pages = page_caps or growth_caps(conn)
    conn.execute(f"PRAGMA main.max_page_count = {main_pages}")
    conn.execute(f"PRAGMA temp.max_page_count = {temp_pages}")
    authorizer = Authorizer()
    conn.set_authorizer(authorizer)
    return authorizer


def guarded_copy() -> tuple[sqlite3.Connection, Authorizer]:
    """A fresh private copy of the database with every guard installed."""
    conn = data.open_copy()
    return conn, install_guards(conn, _page_caps(conn))


class Budget:
    """A progress handler that aborts the running statement once its step or time budget is spent, or on a stop."""

    def __init__(self, steps: int, seconds: float, stop: threading.Event | None = None):
        self.calls_left, self.deadline, self.exceeded = steps // CHECK_EVERY, time.monotonic() + seconds, False
        self._stop = stop

    def __call__(self) -> int:
        self.calls_left -= 1
        if self.calls_left < 0 or time.monotonic() > self.deadline or (self._stop is not None and self._stop.is_set()):
            self.exceeded = True
            return 1
        return 0

    def install(self, conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(self, CHECK_EVERY)


def first_statement(sql: str) -> str:
    """The first complete statement of ``sql`` (the rest is ignored, as the prompt says)."""
    sql = sql.strip()
    for i, ch in enumerate(sql):
        if ch == ";" and sqlite3.complete_statement(sql[: i + 1]):
            return sql[: i + 1]
    return sql
