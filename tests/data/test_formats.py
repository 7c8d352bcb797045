"""The AgentInstruct, ShareGPT and OpenAI layouts: exact round trips on real files, file:line errors on bad ones."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.formats import (
    agentinstruct_schema,
    file_family,
    read_agentinstruct,
    read_examples,
    read_openai,
    read_sharegpt,
    to_agentinstruct_record,
    to_openai_record,
    write_agentinstruct,
    write_examples,
    write_openai,
    write_sharegpt,
)
from agenttuning.data.rows import write_rows
from agenttuning.jsonl import RecordError
from agenttuning.schema import Turn, conversation

# --------------------------------------------------------------------------------------------------------------
# AgentInstruct


def test_trajectory_to_example_is_the_derived_conversation(db_trajectories):
    t = db_trajectories[0]
    ex = from_trajectory(t)
    assert (ex.id, ex.source, ex.family) == (t.task.id, "agent", "db")
    assert ex.turns == conversation(t)
    assert to_agentinstruct_record(ex) == to_agentinstruct_record(t)  # the example's record is the trajectory's


def test_agentinstruct_jsonl_round_trip_is_byte_identical(db_trajectories, tmp_path):
    written = write_agentinstruct(db_trajectories, tmp_path / "a")
    assert written == {"db": 20} and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["db.jsonl"]
    lines = (tmp_path / "a" / "db.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [to_agentinstruct_record(t) for t in db_trajectories]
    first = json.loads(lines[0])["conversations"]
    assert [c["loss"] for c in first[:4]] == [None, False, None, False]  # instructions, Ok., one-shot
    assert first[-1]["from"] == "gpt" and first[-1]["loss"] is True

    loaded = read_agentinstruct(tmp_path / "a")
    assert loaded.examples == [from_trajectory(t) for t in db_trajectories]
    write_agentinstruct(loaded.examples, tmp_path / "b")
    assert (tmp_path / "b" / "db.jsonl").read_bytes() == (tmp_path / "a" / "db.jsonl").read_bytes()


def test_agentinstruct_parquet_has_the_published_schema_and_round_trips(db_trajectories, tmp_path):
    write_agentinstruct(db_trajectories, tmp_path / "a", fmt="parquet")
    table = pq.read_table(tmp_path / "a" / "db.parquet")
    assert table.schema.equals(agentinstruct_schema())
    row = table.slice(0, 1).to_pylist()[0]
    assert row["conversations"][0] == {"from": "human", "loss": None, "value": db_trajectories[0].context[0].content}
    assert row["conversations"][1]["loss"] is False

    loaded = read_agentinstruct(tmp_path / "a" / "db.parquet")
    assert loaded.examples == [from_trajectory(t) for t in db_trajectories]
    write_agentinstruct(loaded.examples, tmp_path / "b", fmt="parquet")
    assert pq.read_table(tmp_path / "b" / "db.parquet").equals(table)
    assert (tmp_path / "b" / "db.parquet").read_bytes() == (tmp_path / "a" / "db.parquet").read_bytes()


def test_published_file_names_and_json_list(db_trajectories, tmp_path):
    """A snapshot of the HF repo: data/<family>-00000-of-00001-<hash>.parquet, README beside; plus a JSON list."""
    recs = [to_agentinstruct_record(t) for t in db_trajectories]
    write_rows(tmp_path / "hf" / "data" / "db-00000-of-00001-916a87c4725da8c0.parquet", recs[:10],
               schema=agentinstruct_schema())  # fmt: skip
    write_rows(tmp_path / "hf" / "data" / "os-00000-of-00001-971539c34fcc7500.json", recs[10:])
    (tmp_path / "hf" / "README.md").write_text("# AgentInstruct\n")
    assert file_family("os-00000-of-00001-971539c34fcc7500.json") == "os"
    assert (tmp_path / "hf" / "data" / "os-00000-of-00001-971539c34fcc7500.json").read_text().startswith("[\n{")

    loaded = read_agentinstruct(tmp_path / "hf")
    assert [e.family for e in loaded.examples] == ["db"] * 10 + ["os"] * 10
    assert [e.turns for e in loaded.examples] == [conversation(t) for t in db_trajectories]
    assert len(loaded.files) == 2


def test_system_turns_do_not_fit_the_agentinstruct_layout():
    ex = Example(id="g", source="general", family="sharegpt", turns=[
        Turn(role="system", content="be nice"), Turn(role="user", content="hi"),
        Turn(role="assistant", content="hello", loss=True)])  # fmt: skip
    with pytest.raises(ValueError, match="system turn"):
        to_agentinstruct_record(ex)


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"id": "db_0", "conversations": [
    {"from": "human", "loss": None, "value": "task"},
    {"from": "gpt", "loss": True, "value": "Action: x"},
]})  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"id": "db_2", "conversations": [', "invalid JSON"),
        ('{"id": "db_2", "conversations": [{"from": "human", "loss": null}, {"from": "gpt", "value": "a"}]}',
         "string 'value'"),
        ('{"id": "db_2", "conversations": [{"from": "human", "loss": true, "value": "t"}, '
         '{"from": "gpt", "loss": true, "value": "a"}]}', "human turn cannot carry loss=True"),
        ('{"id": "db_2", "conversations": [{"from": "human", "value": "t"}, {"from": "gpt", "loss": false, '
         '"value": "a"}]}', "trained assistant turn"),
        ('{"conversations": [{"from": "human", "value": "t"}, {"from": "gpt", "loss": true, "value": "a"}]}', "'id'"),
    ],
    ids=["bad-json", "missing-value", "loss-on-human", "nothing-trained", "no-id"],
)
def test_a_bad_agentinstruct_line_is_named_by_file_and_line(tmp_path, bad, message):
    path = _write_lines(tmp_path / "db.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(RecordError, match=message) as e:
        read_agentinstruct(path)
    assert (e.value.path, e.value.line) == (str(path), 3)
    assert str(e.value).startswith(f"{path}:3: ")


def test_a_bad_parquet_row_is_named_as_a_row(tmp_path):
    good = json.loads(GOOD)
    bad = {"id": "db_1", "conversations": [{"from": "human", "loss": True, "value": "t"},
                                           {"from": "gpt", "loss": True, "value": "a"}]}  # fmt: skip
    path = tmp_path / "db.parquet"
    pq.write_table(pa.Table.from_pylist([good, bad, good], schema=agentinstruct_schema()), path)
    with pytest.raises(RecordError) as e:
        read_agentinstruct(path)
    assert (e.value.path, e.value.line) == (str(path), 2)
    assert str(e.value).startswith(f"{path}:2: row 2: ") and "loss=True" in str(e.value)


def test_nothing_half_read_from_a_directory(tmp_path):
    _write_lines(tmp_path / "a.jsonl", [GOOD])
    _write_lines(tmp_path / "b.jsonl", [GOOD, "{"])
    with pytest.raises(RecordError) as e:
        read_agentinstruct(tmp_path)
    assert e.value.path.endswith("b.jsonl") and e.value.line == 2


# --------------------------------------------------------------------------------------------------------------
# ShareGPT

SHAREGPT = [
    {"id": "c1", "conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}]},
    {"id": "c2", "conversations": [{"from": "system", "value": "Be terse."}, {"from": "user", "value": "Hi"},
                                   {"from": "chatgpt", "value": "Hello."}, {"from": "human", "value": "Bye"},
                                   {"from": "bing", "value": "Bye."}, {"from": "human", "value": "!"},
                                   {"from": "bard", "value": "!"}]},
    {"id": "c3", "conversations": []},
    {"id": "c4", "conversations": [{"from": "human", "value": "anyone?"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "assistant", "value": "a"}]},
]  # fmt: skip


def test_sharegpt_reads_common_roles_and_counts_what_it_drops(tmp_path):
    path = _write_lines(tmp_path / "sharegpt.jsonl", [json.dumps(r) for r in SHAREGPT])
    loaded = read_sharegpt(path)
    assert [e.id for e in loaded.examples] == ["c1", "c2", "sharegpt-5"]  # a missing id: <stem>-<line>
    assert loaded.dropped == {"empty": 1, "no_assistant": 1}
    c2 = loaded.examples[1]
    assert (c2.source, c2.family) == ("general", "sharegpt")
    assert [t.role for t in c2.turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert [t.loss for t in c2.turns] == [None, None, True, None, True, None, True]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_sharegpt_round_trip(tmp_path, suffix, db_trajectories):
    general = read_sharegpt(_write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in SHAREGPT])).examples
    agent = [from_trajectory(t) for t in db_trajectories[:3]]  # in-context gpt turns: loss false must survive
    first, second = tmp_path / f"one.{suffix}", tmp_path / f"two.{suffix}"
    write_sharegpt(general + agent, first)
    back = read_sharegpt(first, family="sharegpt").examples
    assert [e.turns for e in back] == [e.turns for e in general + agent] and [e.id for e in back][:2] == ["c1", "c2"]
    write_sharegpt(back, second)
    assert second.read_bytes() == first.read_bytes()
    if suffix == "jsonl":
        rec = json.loads(first.read_text().splitlines()[0])
        assert rec == {"id": "c1", "conversations": [{"from": "human", "value": "What is 2+2?"},
                                                     {"from": "gpt", "value": "4."}]}  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x", "conversations": [{"from": "tool", "value": "t"}]}, "'from' must be one of"),
        ({"id": "x", "conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "'value' must be a string"),
        ({"id": "x", "conversations": [{"from": "human", "value": "q", "loss": True},
                                       {"from": "gpt", "value": "a"}]}, "cannot carry loss=true"),  # fmt: skip
        ({"id": "x"}, "'conversations' must be a list"),
    ],
)
def test_a_bad_sharegpt_record_is_named_by_file_and_line(tmp_path, bad, message):
    path = _write_lines(tmp_path / "s.jsonl", [json.dumps(SHAREGPT[0]), json.dumps(bad)])
    with pytest.raises(RecordError, match=message) as e:
        read_sharegpt(path)
    assert e.value.line == 2


def test_a_bad_json_list_row_is_named_as_a_row(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([SHAREGPT[0], SHAREGPT[1], {"id": "x", "conversations": "nope"}]))
    with pytest.raises(RecordError, match="row 3: 'conversations' must be a list") as e:
        read_sharegpt(path)
    assert e.value.line == 3


# --------------------------------------------------------------------------------------------------------------
# OpenAI messages and native records


def test_openai_round_trip_matches_the_schema_record(db_trajectories, tmp_path):
    agent = [from_trajectory(t) for t in db_trajectories]
    write_openai(agent, tmp_path / "o.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert recs == [to_openai_record(t) for t in db_trajectories]
    back = read_openai(tmp_path / "o.jsonl", source="agent", family="db")
    assert back.examples == agent
    write_openai(back.examples, tmp_path / "o2.jsonl")
    assert (tmp_path / "o2.jsonl").read_bytes() == (tmp_path / "o.jsonl").read_bytes()


def test_openai_without_loss_trains_assistant_turns_and_checks_lengths(tmp_path):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    path = _write_lines(tmp_path / "chat.jsonl", [
        json.dumps({"messages": msgs}),
        json.dumps({"messages": msgs[:2]}),
        json.dumps({"messages": msgs, "loss": [None, None]}),
    ])  # fmt: skip
    with pytest.raises(RecordError, match="'loss' must be a list as long as 'messages'") as e:
        read_openai(path)
    assert e.value.line == 3
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    loaded = read_openai(path)
    assert [t.loss for t in loaded.examples[0].turns] == [None, None, True]
    assert loaded.examples[0].id == "chat-1" and loaded.dropped == {"no_assistant": 1}


def test_native_example_records_keep_source_and_family(db_trajectories, tmp_path):
    exs = [from_trajectory(t) for t in db_trajectories[:2]]
    write_examples(exs, tmp_path / "e.jsonl")
    assert read_examples(tmp_path / "e.jsonl") == exs
