"""MySQL on SQLite, as far as AgentBench's DB tasks need it: tables, types, the agent's SQL, and MySQL's table hash.

AgentBench runs its DB tasks on MySQL; here they run on SQLite. What differs, and what this module does about it:

- *Tables* (:func:`create_table`): every name is quoted (``"..."``, a ``"`` inside doubled), so names with spaces,
  colons, backquotes or keywords work. Each column's MySQL type is mapped to a SQLite affinity
  (:func:`affinity`): the integer types and ``YEAR``/``BOOL`` to INTEGER, ``FLOAT``/``DOUBLE``/``REAL``/``DECIMAL``
  to REAL, ``BLOB``/``BINARY`` to BLOB, and text, dates and times (and any type not known) to TEXT, so a number
  compares as a number, as in MySQL. Text columns use :data:`COLLATION`, because MySQL 8's default collation compares
  text ignoring case and accents. The rows are inserted as parameters, as AgentBench does (no escapes are read).
- *Statements* (:func:`translate`), the agent's and the gold ones: backquoted names (```name```, also ``[name]``)
  SQLite reads as they are, and a bare name that starts with digits (``1952_Grand_Prix``) is backquoted; MySQL's
  backslash escapes in single-quoted strings (``'Don\\'t'``, ``'a\\nb'``) become SQLite's (``''``, a real newline);
  a number compared with a column is cast to NUMERIC, so a text column compares with it as numbers, as in MySQL;
  ``LEFT(``/``RIGHT(`` (keywords in SQLite) and ``GROUP_CONCAT(... SEPARATOR ', ')`` are rewritten; ``SHOW
  TABLES``, ``SHOW [FULL] COLUMNS|FIELDS FROM t``, ``DESCRIBE t``/``DESC t`` and ``SHOW CREATE TABLE t`` become
  queries of the schema; ``#`` comments become ``--``; and :func:`install_functions` adds ``CONCAT``,
  ``CONCAT_WS``, ``IF``, ``LOCATE`` and the rewritten ``LEFT``/``RIGHT``. Double-quoted text is left to SQLite,
  which reads it as a name when such a column exists and as a string otherwise, so both MySQL's strings and ANSI
  names work. What SQLite still lacks (``REGEXP``, ``DIV``, date functions such as ``STR_TO_DATE``, ...) comes
  back as SQLite's error, and an import counts a gold statement that needs it (with the error).
- *MySQL's table hash* (:func:`mysql_table_md5`): AgentBench grades a change by
  ``md5(group_concat(rowhash order by rowhash))`` over ``substring(md5(concat_ws(',', columns...)), 1, 5)`` on
  tables whose columns are all TEXT; computed here in Python from a table built the same way (``typed=False``), it
  shows whether SQLite, running the gold statement, produced the table MySQL did (the ``answer_md5`` of a task).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

MYSQL_GROUP_CONCAT_MAX_LEN = 1024  # MySQL's default group_concat_max_len: its table hash reads at most this much
COLLATION = "MYSQL_AI_CI"  # text columns' collation: MySQL 8's default, accent- and case-insensitive

_INTEGER = {"INT", "INTEGER", "TINYINT", "SMALLINT", "MEDIUMINT", "BIGINT", "YEAR", "BOOL", "BOOLEAN", "BIT",
            "SERIAL"}
_REAL = {"FLOAT", "DOUBLE", "REAL", "DECIMAL", "DEC", "NUMERIC", "FIXED"}
_TEXT = {"CHAR", "VARCHAR", "TEXT", "TINYTEXT", "MEDIUMTEXT", "LONGTEXT", "STRING", "NCHAR", "NVARCHAR", "DATE",
         "DATETIME", "TIMESTAMP", "TIME", "ENUM", "SET", "JSON", "CHARACTER"}
_BLOB = {"BLOB", "TINYBLOB", "MEDIUMBLOB", "LONGBLOB", "BINARY", "VARBINARY"}


def affinity(mysql_type: str) -> str:
    """The SQLite affinity (column type) for a MySQL column type, e.g. ``DECIMAL(5,1)`` -> ``REAL``.

    >>> [affinity(t) for t in ("INT", "decimal(6,3)", "DATE", "varchar(20)", "YEAR", "geometry")]
    ['INTEGER', 'REAL', 'TEXT', 'TEXT', 'INTEGER', 'TEXT']
    """
    words = re.findall(r"[A-Za-z]+", mysql_type.upper())
    base = words[0] if words else ""
    if base in _INTEGER:
        return "INTEGER"
    if base in _REAL or (base == "DOUBLE" and "PRECISION" in words):
        return "REAL"
    if base in _BLOB:
        return "BLOB"
    return "TEXT"


def known_type(mysql_type: str) -> bool:
    """Whether :func:`affinity` knows the type (an unknown one is read as TEXT, and an import notes it)."""
    words = re.findall(r"[A-Za-z]+", mysql_type.upper())
    return bool(words) and words[0] in _INTEGER | _REAL | _TEXT | _BLOB


def quote(name: str) -> str:
    """A SQLite identifier: ``name`` in double quotes, any ``"`` in it doubled.

    >>> print(quote('Size "XL" (cm)'))
    "Size ""XL"" (cm)"
    """
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=65536)
def collation_key(text: str) -> str:
    """What :data:`COLLATION` compares: the text without accents, case-folded (MySQL 8's ``utf8mb4_0900_ai_ci``
    approximated: ``'Montréal' = 'MONTREAL'``, ``'Straße' = 'strasse'``; trailing spaces count, as there).

    >>> collation_key("Montréal") == collation_key("MONTREAL")
    True
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _collate(a: str, b: str) -> int:
    ka, kb = collation_key(a), collation_key(b)
    return (ka > kb) - (ka < kb)


def install_collation(conn: sqlite3.Connection) -> None:
    """Add :data:`COLLATION` to ``conn`` (needed before a table that uses it is created or read)."""
    conn.create_collation(COLLATION, _collate)


def create_table(conn: sqlite3.Connection, name: str, columns: Sequence[tuple[str, str]],
                 rows: Iterable[Sequence[Any]], *, typed: bool = True) -> None:
    """Create table ``name`` with ``columns`` (``(name, mysql_type)`` pairs) and insert ``rows`` as parameters.

    ``typed``: the columns get the affinities of their MySQL types (:func:`affinity`); otherwise every column is
    TEXT, as AgentBench's MySQL tables are (for :func:`mysql_table_md5`). Raises ``sqlite3.Error`` (a duplicate
    column name) or ``ValueError`` (a row of the wrong length)."""
    install_collation(conn)
    defs = []
    for col, mysql_type in columns:
        kind = affinity(mysql_type) if typed else "TEXT"
        defs.append(f"{quote(col)} {kind}" + (f" COLLATE {COLLATION}" if kind == "TEXT" else ""))
    conn.execute(f"CREATE TABLE {quote(name)} ({', '.join(defs)})")
    width = len(columns)
    values = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"row {i} has {len(row)} values for {width} columns")
        values.append(tuple(_cell(v) for v in row))
    conn.executemany(f"INSERT INTO {quote(name)} VALUES ({', '.join('?' * width)})", values)


def _cell(value: Any) -> Any:
    """A cell as a parameter: JSON scalars as they are, anything else (a list, an object) as its text."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# Statements

# One token of SQL text that is not plain code: a quoted string or name, a bracketed name, or a comment.
_TOKEN = re.compile(
    r"""'(?:[^'\\]|\\.|'')*'?      # single-quoted string (MySQL: backslash escapes, '' doubling)
      | "(?:[^"\\]|\\.|"")*"?      # double-quoted: a string or a name; left to SQLite
      | `(?:[^`]|``)*`?            # backquoted name
      | \[[^\]]*\]?                # bracketed name
      | --[^\n]*                   # line comments
      | \#[^\n]*
      | /\*.*?(?:\*/|$)            # block comment
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "Z": "\x1a", "0": "\\0", "%": "\\%", "_": "\\_"}
_BACKSLASH = re.compile(r"\\(.)", re.DOTALL)
_FUNCTION_RENAMES = re.compile(r"\b(LEFT|RIGHT)(\s*\()", re.IGNORECASE)
# MySQL reads 1952_British_Grand_Prix as a name (digits then a letter or _), SQLite as a broken number
_DIGIT_NAME = re.compile(r"(?<![\w.$])\d+[A-Za-z_$][\w$]*")
_NOT_A_NAME = re.compile(r"\d+[eE]\d*|0[xXbB][0-9A-Fa-f]*")  # 1e5, 0x1F: numbers in both
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# a number compared with something: after a comparison operator, BETWEEN or AND; or before a comparison operator
_COMPARED_NUMBER = re.compile(
    rf"(?P<before>(?:<=|>=|<>|!=|<=>|==|=|<|>|\bBETWEEN|\bAND)\s*)(?P<a>{_NUMBER})(?![\w.])"
    rf"|(?<![\w.$])(?P<b>{_NUMBER})(?P<after>\s*(?:<=|>=|<>|!=|==|=|<|>))",
    re.IGNORECASE)
_SEPARATOR = re.compile(r"\s+SEPARATOR\s*$", re.IGNORECASE)

_NAME = r"(`(?:[^`]|``)+`|\"(?:[^\"]|\"\")+\"|'(?:[^']|'')+'|\[[^\]]+\]|[\w$.]+)"
_SHOW_TABLES = re.compile(r"^\s*SHOW\s+(?:FULL\s+)?TABLES\b[^;]*;?\s*$", re.IGNORECASE)
_DESCRIBE = re.compile(
    rf"^\s*(?:DESCRIBE|DESC|EXPLAIN|SHOW\s+(?:FULL\s+)?(?:COLUMNS|FIELDS)\s+(?:FROM|IN))\s+{_NAME}\s*;?\s*$",
    re.IGNORECASE)
_SHOW_CREATE = re.compile(rf"^\s*SHOW\s+CREATE\s+TABLE\s+{_NAME}\s*;?\s*$", re.IGNORECASE)


def _unescape_mysql(body: str) -> str:
    """The content of a MySQL single-quoted string (backslash escapes read, ``\\%`` and ``\\_`` kept for LIKE)."""
    return _BACKSLASH.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), body.replace("''", "'"))


def _name_text(token: str) -> str:
    """The name a quoted, bracketed or bare identifier token stands for."""
    if token[0] == "`":
        return token[1:-1].replace("``", "`")
    if token[0] in "\"'":
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[0] == "[":
        return token[1:-1]
    return token.split(".")[-1]  # db.table: there is one database


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _numeric(m: re.Match[str]) -> str:
    if m.group("a") is not None:
        return f"{m.group('before')}CAST({m.group('a')} AS NUMERIC)"
    return f"CAST({m.group('b')} AS NUMERIC){m.group('after')}"


def _code(segment: str) -> str:
    """Rewrites in plain code (outside strings, names and comments)."""
    segment = _FUNCTION_RENAMES.sub(lambda m: f"mysql_{m.group(1).lower()}{m.group(2)}", segment)
    segment = _DIGIT_NAME.sub(lambda m: m.group(0) if _NOT_A_NAME.fullmatch(m.group(0)) else f"`{m.group(0)}`",
                              segment)
    return _COMPARED_NUMBER.sub(_numeric, segment)


def translate(sql: str) -> str:
    """A MySQL statement as SQLite runs it (see the module docs); text SQLite reads the same way is unchanged.

    >>> translate("SELECT `No.` FROM `My Table` WHERE Title = 'Don\\\\'t Cry' AND LEFT(x, 2) = 'ab'")
    "SELECT `No.` FROM `My Table` WHERE Title = 'Don''t Cry' AND mysql_left(x, 2) = 'ab'"
    >>> translate("DESCRIBE `My Table`")[:40]
    'SELECT name AS Field, type AS Type, CASE'
    """
    if _SHOW_TABLES.match(sql):
        return "SELECT name AS Tables_in_database FROM sqlite_master WHERE type = 'table' ORDER BY name;"
    if m := _DESCRIBE.match(sql):
        return ("SELECT name AS Field, type AS Type, CASE WHEN \"notnull\" THEN 'NO' ELSE 'YES' END AS \"Null\", "
                "CASE WHEN pk THEN 'PRI' ELSE '' END AS \"Key\", dflt_value AS \"Default\", '' AS Extra "
                f"FROM pragma_table_info({_literal(_name_text(m.group(1)))});")
    if m := _SHOW_CREATE.match(sql):
        name = _name_text(m.group(1))
        return f"SELECT name AS \"Table\", sql AS \"Create Table\" FROM sqlite_master WHERE name = {_literal(name)};"
    out: list[str] = []
    pos = 0
    for token in _TOKEN.finditer(sql):
        code = _code(sql[pos : token.start()])
        text = token.group(0)
        if text.startswith("'") and len(text) >= 2 and text.endswith("'"):
            code = _SEPARATOR.sub(", ", code)  # GROUP_CONCAT(x SEPARATOR ', ') -> GROUP_CONCAT(x, ', ')
            text = _literal(_unescape_mysql(text[1:-1])) if "\\" in text else text
        elif text.startswith("#"):  # a MySQL comment; SQLite knows only --
            text = "--" + text[1:]
        out += [code, text]
        pos = token.end()
    out.append(_code(sql[pos:]))
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# MySQL functions SQLite lacks


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _concat(*args: Any) -> str | None:
    return None if any(a is None for a in args) else "".join(map(_text, args))


def _concat_ws(sep: Any, *args: Any) -> str | None:
    return None if sep is None else _text(sep).join(_text(a) for a in args if a is not None)


def _if(cond: Any, then: Any, otherwise: Any) -> Any:
    if isinstance(cond, (bytes, str)):
        m = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", _text(cond))
        cond = float(m.group(0)) if m else 0
    return then if cond else otherwise


def _locate(sub: Any, s: Any, start: Any = 1) -> int | None:
    if sub is None or s is None or start is None:
        return None
    begin = max(int(start), 1) - 1
    return _text(s).lower().find(_text(sub).lower(), begin) + 1  # MySQL's default collation: case-insensitive


def _left(s: Any, n: Any) -> str | None:
    return None if s is None or n is None else _text(s)[: max(int(n), 0)]


def _right(s: Any, n: Any) -> str | None:
    if s is None or n is None:
        return None
    n = max(int(n), 0)
    return _text(s)[-n:] if n else ""


MYSQL_FUNCTIONS = {
    "concat": (-1, _concat), "concat_ws": (-1, _concat_ws), "if": (3, _if), "locate": (-1, _locate),
    "mysql_left": (2, _left), "mysql_right": (2, _right),
}


def install_functions(conn: sqlite3.Connection) -> None:
    """Add :data:`MYSQL_FUNCTIONS` to ``conn`` (their results stay within SQLite's length limit on it)."""
    for name, (n_args, fn) in MYSQL_FUNCTIONS.items():
        conn.create_function(name, n_args, fn, deterministic=True)


# --------------------------------------------------------------------------------------------------------------
# MySQL's table hash, as AgentBench computes it


def _mysql_text(value: Any) -> str:
    """A value as MySQL's CONCAT_WS shows it (AgentBench's columns are TEXT, so values are mostly strings)."""
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    return _text(value)


def mysql_table_md5(rows: Iterable[Sequence[Any]]) -> str:
    """AgentBench's hash of a table (on MySQL: ``md5(group_concat(rowhash order by rowhash))`` with ``rowhash =
    substring(md5(concat_ws(',', columns...)), 1, 5)``), from its rows: NULLs skipped as CONCAT_WS skips them, and
    the concatenation cut at MySQL's default ``group_concat_max_len``.

    >>> mysql_table_md5([("a", "1"), ("b", None)]) == hashlib.md5(",".join(sorted(
    ...     [hashlib.md5(b"a,1").hexdigest()[:5], hashlib.md5(b"b").hexdigest()[:5]])).encode()).hexdigest()
    True
    """
    hashes = sorted(
        hashlib.md5(",".join(_mysql_text(v) for v in row if v is not None).encode()).hexdigest()[:5] for row in rows
    )
    joined = ",".join(hashes).encode()[:MYSQL_GROUP_CONCAT_MAX_LEN]
    return hashlib.md5(joined).hexdigest()
