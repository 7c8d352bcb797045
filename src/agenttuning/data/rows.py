"""Rows of data files, whatever the container: JSONL, a JSON list, or parquet; located for error messages.

Readers yield ``(line, where, row)``: for JSONL ``line`` is the file line and ``where`` is ``"line N"``; for a JSON
list or parquet ``line`` is the row index + 1 and ``where`` is ``"row N"`` (the published AgentInstruct files are
parquet, where lines do not exist). Errors are :class:`~agenttuning.jsonl.RecordError` naming ``file:line``.
Writers pick the container from the file suffix and replace the file atomically (temporary file + rename).
Invalid UTF-8 and JSON nested too deeply to parse are RecordErrors naming the file and line too, never a
``UnicodeDecodeError`` or ``RecursionError`` traceback.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from agenttuning.jsonl import RecordError, dumps, iter_json, write_atomic

_BOM = b"\xef\xbb\xbf"

SUFFIXES = (".jsonl", ".json", ".parquet")
# what stages write beside their data; never read as data when a directory is given
META_FILES = frozenset({"stats.json", "manifest.json", "metrics.json", "config.json"})


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself, or every data file below a directory (recursively, sorted; hidden and META_FILES skipped)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES and _is_data(f.relative_to(p)))
        if not found:
            raise FileNotFoundError(f"{p}: no {', '.join(SUFFIXES)} files found")
        return found
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.suffix not in SUFFIXES:
        raise ValueError(f"{p}: unsupported file type {p.suffix!r} (use {', '.join(SUFFIXES)})")
    return [p]


def _is_data(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts) and rel.name not in META_FILES


def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line, where, row)`` for each record of one file; RecordError on unreadable content."""
    p = Path(path)
    if p.suffix == ".parquet":
        yield from _parquet_rows(p)
        return
    with open(p, "rb") as f:  # bytes: a JSON list is told by its first character, whatever the encoding after it
        head = f.read(4096).removeprefix(_BOM).lstrip()
    if p.suffix == ".json" and head.startswith(b"["):
        yield from _json_list_rows(p)
        return
    for line, obj in iter_json(p):
        yield line, f"line {line}", obj


def located(path: str | os.PathLike[str], line: int, where: str, message: str) -> RecordError:
    """The RecordError for a row: ``file:line: message``, with ``row N:`` in front where rows are not lines."""
    return RecordError(path, line, message if where.startswith("line") else f"{where}: {message}")


def first_row(path: str | os.PathLike[str]) -> tuple[Path, int, str, Any] | None:
    """``(file, line, where, row)`` of the first record under ``path`` (a file or directory), or None if empty."""
    return next(((f, line, where, row) for f in data_files(path) for line, where, row in iter_rows(f)), None)


def _json_list_rows(p: Path) -> Iterator[tuple[int, str, Any]]:
    raw = p.read_bytes().removeprefix(_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 4]
        raise RecordError(p, raw.count(b"\n", 0, e.start) + 1, f"invalid UTF-8 (bytes {bad!r} at offset "
                          f"{e.start}): save the file as UTF-8") from None  # fmt: skip
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(p, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:  # the parser recurses per nesting level: a hostile file must not end in a traceback
        raise RecordError(p, _deepest_line(text), "JSON nested too deeply to read") from None
    if not isinstance(data, list):
        raise RecordError(p, 1, f"expected a JSON list of records, got {type(data).__name__}")
    for i, obj in enumerate(data, 1):
        yield i, f"row {i}", obj


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}\n]')  # strings (skipped whole), brackets, newlines


def _deepest_line(text: str) -> int:
    """The line where ``text``'s bracket nesting is deepest (brackets inside strings do not count)."""
    depth = deepest = 0
    line = where = 1
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c == "\n":
            line += 1
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, line
        elif c in "]}":
            depth -= 1
        else:
            line += c.count("\n")  # a raw newline inside a string is invalid JSON, but keep the count honest
    return where


def _parquet_rows(p: Path) -> Iterator[tuple[int, str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise RecordError(p, 1, f"unreadable parquet: {e}") from None
    i = 0
    batches = pf.iter_batches(batch_size=1024)
    while True:
        try:  # a corrupt page or invalid UTF-8 in a string column surfaces only while reading
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow's error types vary; each names what is wrong
            raise RecordError(p, i + 1, f"row {i + 1}: unreadable parquet: {e}") from None
        if batch is None:
            return
        for row in rows:
            i += 1
            yield i, f"row {i}", row


def read_all(
    path: str | os.PathLike[str], convert: Callable[[Path, dict[str, Any], int], Any]
) -> list[tuple[Path, int, Any]]:
    """Apply ``convert(file, row, line)`` to every row of every file under ``path``; collect ``(file, line, result)``.

    ``convert`` raises ValueError for a bad row; it comes back as RecordError naming the file and line (or row).
    Everything is read before anything is returned, so a caller never acts on half a dataset.
    """
    out = []
    for f in data_files(path):
        out += [(f, line, x) for line, x in convert_rows(f, iter_rows(f), lambda r, line, f=f: convert(f, r, line))]
    return out


def convert_rows(
    name: str | os.PathLike[str], rows: Iterable[tuple[int, str, Any]], convert: Callable[[dict[str, Any], int], Any]
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, convert(row, line))`` for the ``(line, where, row)`` rows of one source called ``name``.

    A row that is not an object, or a ValueError from ``convert``, is a RecordError naming ``name:line``: the one
    place rows become located errors, for files (:func:`read_all`) and Hub dataset splits alike.
    """
    for line, where, row in rows:
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            value = convert(row, line)
        except ValueError as e:  # pydantic's ValidationError is a ValueError too
            raise located(name, line, where, _one_line(e)) from None
        yield line, value


def _one_line(e: ValueError) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc']) or 'record'}: {err['msg']}" for err in e.errors()[:3]]
        return "; ".join(parts)
    return str(e)


def write_rows(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], *, schema: Any = None) -> int:
    """Write records atomically as JSONL, a JSON list (one record per line) or parquet, by the suffix of ``path``.

    ``schema`` (a pyarrow schema) fixes the parquet column types; without it pyarrow infers them.
    Returns the number of records written.
    """
    p = Path(path)
    if p.suffix == ".jsonl":
        return write_atomic(p, rows)
    rows = list(rows)
    if p.suffix == ".json":
        body = "[\n" + ",\n".join(dumps(r) for r in rows) + ("\n]\n" if rows else "]\n")
        _replace(p, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
        return len(rows)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=schema)
        _replace(p, lambda tmp: pq.write_table(table, tmp))
        return len(rows)
    raise ValueError(f"{p}: unsupported file type {p.suffix!r} (use {', '.join(SUFFIXES)})")


def _replace(p: Path, write: Callable[[str], Any]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=p.suffix, dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document (indented, UTF-8) atomically: for stats, manifests and metrics."""
    text = json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
    _replace(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
