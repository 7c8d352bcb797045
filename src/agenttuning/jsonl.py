"""JSONL files that validate every record, name ``file:line`` on bad input, and never tear.

Writers append one whole line at a time and fsync it, so a killed process leaves at most one partial final line;
:func:`repair_tail` removes that line before a resumed run appends. Whole-file writes go through a temporary file
and an atomic rename. An :class:`AppendWriter` holds an exclusive lock on its file for its whole life, so a second
process appending to the same file (two rollouts on one ``--out``) gets :class:`LockedError` instead of duplicating
records.

Text is data, whatever it holds: every record can be written (a lone UTF-16 surrogate, which UTF-8 cannot encode,
becomes U+FFFD, :func:`utf8_safe`), and every read error (invalid UTF-8, JSON nested too deeply, a bad record) is a
:class:`RecordError` naming ``file:line``.
"""

from __future__ import annotations

import contextlib
import fcntl
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


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary file as text mode numbers them (``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line)."""
    for raw in f:
        if b"\r" in raw:
            yield from raw.splitlines() or [b""]
        else:
            yield raw


def iter_json(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; RecordError on invalid UTF-8 or invalid JSON.

    Bytes are decoded line by line, so a bad byte is reported with its line instead of as a bare decode error.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(_lines(f), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(path, lineno, f"invalid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                                  "of the line (the file must be UTF-8 text)") from None  # fmt: skip
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except RecursionError:  # json's C scanner recurses once per nesting level
                raise RecordError(path, lineno, "invalid JSON: nested too deeply") from None
            yield lineno, obj


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
        except RecursionError:
            raise RecordError(path, lineno, "record nested too deeply") from None
    return out


def utf8_safe(text: str) -> str:
    """``text`` itself if UTF-8 can encode it, else a copy with each lone UTF-16 surrogate replaced by U+FFFD.

    A Python str can hold lone surrogates (JSON ``"\\ud800"`` decodes to one) that no UTF-8 file can store; a
    surrogate pair left as two code points is joined into the character it stands for.

    >>> utf8_safe("ok \\ud800!") == "ok \\ufffd!"
    True
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def dumps(record: BaseModel | dict[str, Any]) -> str:
    """One compact JSON line (no trailing newline) that UTF-8 can always encode (:func:`utf8_safe`)."""
    if isinstance(record, BaseModel):
        try:
            return record.model_dump_json()
        except ValueError as e:  # pydantic refuses text UTF-8 cannot encode; other failures are re-raised below
            try:
                data = record.model_dump(mode="json")
            except ValueError:
                raise e from None
            return utf8_safe(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return utf8_safe(json.dumps(record, ensure_ascii=False, separators=(",", ":")))


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


class LockedError(FileExistsError):
    """Another process holds the file (or folder) exclusively: it is in use, as if it already existed."""


def try_lock(fd: int, path: str | os.PathLike[str], what: str) -> None:
    """Take an exclusive ``flock`` on ``fd`` without waiting; LockedError naming ``path`` if another holder has it.

    flock locks belong to the open file, so the kernel drops them when the holder exits, even on SIGKILL: a killed
    run never leaves a stale lock behind.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"{path} is in use: another process is writing {what} (wait for it to finish, "
                          "or choose another output)") from None  # fmt: skip


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` (created if missing) for the ``with`` block."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try_lock(fd, p.parent if p.name.startswith(".") else p, what)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


class AppendWriter:
    """Append-only JSONL writer: each record is written as one line, flushed and fsync'd before returning.

    The file is locked exclusively while the writer is open (:class:`LockedError` if another process has it), and
    only then is a torn last line cut (``repair=False`` leaves that to the caller, who may first want to look at the
    file under the lock).
    """

    def __init__(self, path: str | os.PathLike[str], *, repair: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: each write lands at the end, after whatever repair_tail cut
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try_lock(self._fd, self.path, "it")
            if repair:
                repair_tail(self.path)
        except BaseException:
            self.close()
            raise

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
