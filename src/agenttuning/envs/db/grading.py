"""Grading for the ``db`` environment: parse a ``Final Answer``, compare it with the gold rows, hash tables.

Rules (AgentBench's database task grades the same two ways; the tolerances here are this package's own):

- *Parsing* uses only :func:`ast.literal_eval` and :func:`json.loads`, never ``eval``: a Python or JSON literal is
  read as data; anything else counts as one bare string. A scalar becomes a one-element list, and rows of one
  column (``[('Paris',)]``) are flattened, so ``Paris``, ``'Paris'``, ``["Paris"]`` and ``[('Paris',)]`` all mean the
  same answer.
- *Values*: a number matches a gold integer only when equal; it matches a gold float when they agree to two
  decimals (within 0.01), or within 1e-9 relatively (huge values written in scientific notation). So an average
  rounded to two decimals passes and one rounded to one decimal does not. Strings match after stripping whitespace,
  case-insensitively (a model should not fail on ``paris`` for ``Paris``). A numeric string (``'42'``, ``'1,234'``)
  is read as its number when the gold value is a number.
- *Rows*: unordered answers are compared as multisets, ordered ones (``ORDER BY`` questions) position by position.
- *Tables* (insert, update and delete tasks) are compared by :func:`table_hash`: an order-independent hash of the
  table's rows, so any sequence of statements that leaves the same rows scores.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

MAX_ANSWER_CHARS = 20_000  # longer answers are not parsed at all (literal_eval cost grows with input)
_FINAL = re.compile(r"final\s*answer\s*:", re.IGNORECASE)
_INT_LITERAL = re.compile(r"^[+-]?\d+$")
_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def answer_text(action: str) -> str | None:
    """The text after ``Final Answer:`` in an action, or None when the marker is missing."""
    m = _FINAL.search(action)
    return action[m.end() :].strip() if m else None


def parse_answer(text: str) -> list[Any]:
    """An answer as a list of values (scalars, or tuples for multi-column rows); never evaluates code.

    >>> parse_answer("[('Paris',), ('Lyon',)]")
    ['Paris', 'Lyon']
    >>> parse_answer("42")
    [42]
    >>> parse_answer("__import__('os')")
    ["__import__('os')"]
    """
    text = text.strip()
    if text.startswith("```"):  # some models fence the answer
        text = text.strip("`").removeprefix("python").removeprefix("json").strip()
    value: Any = text
    if len(text) <= MAX_ANSWER_CHARS:
        for loader in (ast.literal_eval, json.loads):
            try:
                value = loader(text)
                break
            except Exception:  # noqa: BLE001 - any failure (syntax, recursion depth, memory) just means "not a literal"
                continue
    if isinstance(value, (list, tuple, set)):
        items = list(value)
    else:
        items = [value]
    return [_row(item) for item in items]


def _row(item: Any) -> Any:
    """A single-column row becomes its value; a longer row becomes a tuple."""
    if isinstance(item, (list, tuple)):
        return item[0] if len(item) == 1 else tuple(item)
    return item


def _number(value: Any) -> float | int | None:
    """A number, or a numeric string ('42', '3.5', '1,234') read as one; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        s = value.strip()
        if _THOUSANDS.match(s):
            s = s.replace(",", "")
        if _INT_LITERAL.match(s):
            return int(s)
        if _FLOAT_LITERAL.match(s):
            return float(s)
    return None


def values_match(given: Any, gold: Any) -> bool:
    """One cell: numbers with the tolerance above, strings stripped and case-insensitive."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        n = _number(given)
        if n is None or (isinstance(n, float) and not math.isfinite(n)):
            return False
        if isinstance(gold, int):
            return n == gold
        return abs(n - gold) <= max(0.01, 1e-9 * abs(gold))
    if gold is None:
        return given is None or (isinstance(given, str) and given.strip().lower() in ("none", "null"))
    if isinstance(given, bool) or given is None:
        return False
    return str(given).strip().casefold() == str(gold).strip().casefold()


def rows_match(given: Any, gold: Any) -> bool:
    if isinstance(gold, (list, tuple)):
        return isinstance(given, tuple) and len(given) == len(gold) and all(map(values_match, given, gold))
    return not isinstance(given, tuple) and values_match(given, gold)


def gold_rows(answer: Sequence[Sequence[Any]]) -> list[Any]:
    """Stored gold rows (lists of cells) in the shape :func:`parse_answer` produces."""
    return [_row(list(r)) for r in answer]


def answers_match(given: list[Any], gold: list[Any], *, ordered: bool) -> bool:
    """Compare parsed rows with gold rows: in order, or as multisets (greedy matching; answers are short)."""
    if len(gold) == 1 and isinstance(gold[0], tuple) and len(given) == len(gold[0]):
        # a single multi-column row written flat: [48.85, 2.35] for [(48.85, 2.35)]
        if not any(isinstance(g, tuple) for g in given):
            given = [tuple(given)]
    if len(given) != len(gold):
        return False
    if ordered:
        return all(map(rows_match, given, gold))
    unused = list(given)
    for g in gold:
        for i, candidate in enumerate(unused):
            if rows_match(candidate, g):
                del unused[i]
                break
        else:
            return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Table hashes: the sum of per-row digests is independent of row order and can be updated one scope at a time,
# which lets task generation hash "the table after the gold change" without rereading the whole table.

_MOD = 1 << 128


def row_digest(row: Iterable[Any]) -> int:
    return int.from_bytes(hashlib.sha256(repr(tuple(row)).encode()).digest()[:16], "big")


def combine(total: int, count: int) -> str:
    """The printable hash of a multiset of rows given its digest sum and size."""
    return hashlib.sha256(f"{count}:{total % _MOD:032x}".encode()).hexdigest()[:32]


def digest_sum(rows: Iterable[Iterable[Any]]) -> tuple[int, int]:
    total = count = 0
    for row in rows:
        total += row_digest(row)
        count += 1
    return total % _MOD, count


def table_hash(conn: sqlite3.Connection, table: str) -> str:
    """Order-independent hash of all rows of ``table`` (raises sqlite3.Error if the table is gone)."""
    # main. explicitly: a TEMP table of the same name would otherwise shadow the real one
    return combine(*digest_sum(conn.execute(f'SELECT * FROM main."{table}"')))
