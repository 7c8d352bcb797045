"""JSONL files: every record validated, errors name file and line, writes never tear or half-write."""

from __future__ import annotations

import os

import pytest

from agenttuning.jsonl import AppendWriter, RecordError, read_records, repair_tail, write_atomic
from agenttuning.schema import Task


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
