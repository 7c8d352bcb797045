"""JSONL files that validate every record, name ``file:line`` on bad input, and never tear.

Writers append one whole line at a time and fsync it, so a killed process leaves at most one partial final line;
:func:`repair_tail` removes that line before a resumed run appends. Whole-file writes go through a temporary file
and an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class RecordError(ValueError):
    """A malformed record, located as ``file:line: what is wrong``."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{path}:{line}: {message}")


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "record"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(parts) + more


def iter_json(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; RecordError on invalid JSON."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


def read_records(path: str | os.PathLike[str], model: type[M]) -> list[M]:
    """Read and validate every record of a JSONL file as ``model``; the first bad one raises RecordError.

    The whole file is validated before anything is returned, so a caller never acts on half a file.
    """
    out = []
    for lineno, obj in iter_json(path):
        if not isinstance(obj, dict):
            raise RecordError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        try:
            out.append(model.model_validate(obj))
        except ValidationError as e:
            raise RecordError(path, lineno, _describe(e)) from None
    return out


def dumps(record: BaseModel | dict[str, Any]) -> str:
    """One compact JSON line (no trailing newline)."""
    if isinstance(record, BaseModel):
        return record.model_dump_json()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Cut a partial last line left by a killed writer; returns the number of bytes removed.

    Only an unterminated final line is removed: a complete line that is malformed is reported by the reader,
    never silently dropped.
    """
    p = Path(path)
    if not p.exists():
        return 0
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the previous newline
        pos, chunk = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


class AppendWriter:
    """Append-only JSONL writer: each record is written as one line, flushed and fsync'd before returning."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        # O_APPEND: each write lands at the end even if another writer appended meanwhile
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        data = (dumps(record) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AppendWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_replace(path: str | os.PathLike[str], write: Callable[[IO[str]], Any]) -> Any:
    """Write a file through ``write(f)`` on a temporary file in the same folder, fsync, then rename it into place.

    Readers see the old file or the new one, never half of one; on any error the temporary file is removed.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_replace`)."""
    atomic_replace(path, lambda f: f.write(text))


def write_atomic(path: str | os.PathLike[str], records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write a whole JSONL file atomically (temp file + rename); returns the number of records."""

    def write(f: IO[str]) -> int:
        n = 0
        for r in records:
            f.write(dumps(r) + "\n")
            n += 1
        return n

    return atomic_replace(path, write)
