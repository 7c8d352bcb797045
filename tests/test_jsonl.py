"""JSONL files: every record validated, errors name file and line, writes never tear or half-write."""

from __future__ import annotations

import os

import pytest

from agenttuning.jsonl import (
    AppendWriter,
    LockedError,
    RecordError,
    dumps,
    iter_json,
    read_records,
    repair_tail,
    write_atomic,
)
from agenttuning.schema import Step, Task


def task(i: int) -> Task:
    return Task(id=f"t{i}", env="db-v1", split="test", instruction=f"question {i} — ünïcode ✓")


def test_append_writer_writes_whole_lines_that_read_back(tmp_path):
    p = tmp_path / "a" / "tasks.jsonl"
    with AppendWriter(p) as w:
        for i in range(5):
            w.write(task(i))
    assert read_records(p, Task) == [task(i) for i in range(5)]
    assert p.read_bytes().count(b"\n") == 5


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "x", "env": "db-v1", "split": "dev", "instruction": "q"}', "split"),
        ('{"id": "x", "env": "db-v1", "split": "test"}', "instruction: Field required"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    p = tmp_path / "tasks.jsonl"
    good = task(0).model_dump_json()
    p.write_text(f"{good}\n\n{good}\n{line}\n{good}\n")
    with pytest.raises(RecordError) as e:
        read_records(p, Task)
    assert str(e.value).startswith(f"{p}:4: ") and message in str(e.value)
    assert (e.value.path, e.value.line) == (str(p), 4)


def test_repair_tail_cuts_only_an_unterminated_last_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    assert repair_tail(p) == len(b'{"a":')
    assert p.read_bytes() == b'{"a":1}\n{"a":2}\n'
    assert repair_tail(p) == 0  # a complete file is left alone
    p.write_bytes(b'{"a":')  # a single torn line
    repair_tail(p)
    assert p.read_bytes() == b""


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path):
    p = tmp_path / "x.jsonl"
    write_atomic(p, [task(0)])

    def boom():
        yield task(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(p, boom())
    assert read_records(p, Task) == [task(0)]
    assert os.listdir(tmp_path) == ["x.jsonl"]  # no temp file left behind


@pytest.mark.parametrize(
    "bad, message",
    [
        (b'{"id": "t9", "instruction": "caf\xe9"}',
         "invalid UTF-8: byte 0xe9 at byte 33 of the line (the file must be UTF-8 text)"),
        (b"[" * 100_000, "invalid JSON: nested too deeply"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "invalid JSON: nested too deeply"),
    ],
    ids=["invalid utf-8", "deep array", "deep object"],
)
def test_undecodable_or_too_deep_lines_name_file_and_line(tmp_path, bad, message):
    p = tmp_path / "tasks.jsonl"
    good = task(0).model_dump_json().encode()
    p.write_bytes(good + b"\n" + good + b"\r\n" + bad + b"\n" + good + b"\n")
    with pytest.raises(RecordError) as e:
        read_records(p, Task)
    assert str(e.value) == f"{p}:3: {message}"


def test_line_numbers_count_line_endings_as_text_mode_does(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a":1}\r\n\r\n{"a":2}\r{"a":3}\n{"a":4}')
    assert list(iter_json(p)) == [(1, {"a": 1}), (3, {"a": 2}), (4, {"a": 3}), (5, {"a": 4})]


def test_text_utf8_cannot_encode_is_written_with_replacement_characters(tmp_path):
    p = tmp_path / "x.jsonl"
    with AppendWriter(p) as w:
        w.write(Step(thought="lone \ud800 and \udfff", action="a\x00b", observation="ok"))
        w.write({"text": "\udc80", "pair": "\ud83d\ude00"})
    (_, first), (_, second) = iter_json(p)
    step = Step.model_validate(first)
    assert (step.thought, step.action) == ("lone \ufffd and \ufffd", "a\x00b")
    assert second == {"text": "\ufffd", "pair": "\U0001f600"}
    assert dumps(task(1)) == task(1).model_dump_json()  # clean text takes the fast path unchanged


def test_a_second_writer_on_a_file_in_use_is_refused(tmp_path):
    p = tmp_path / "x.jsonl"
    with AppendWriter(p) as w:
        w.write(task(0))
        with pytest.raises(LockedError, match=f"{p} is in use"):
            AppendWriter(p)
    with AppendWriter(p) as w:  # released with the first writer
        w.write(task(1))
    assert read_records(p, Task) == [task(0), task(1)]
