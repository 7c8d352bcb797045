"""The prepare stage end to end: any layout in, exact labels, cut at turn boundaries, packed rows on disk."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.data.example import Example
from agenttuning.data.formats import write_agentinstruct, write_examples, write_sharegpt
from agenttuning.data.outputs import EmptyOutputError
from agenttuning.schema import Turn
from agenttuning.tokens.masks import IGNORE_INDEX
from agenttuning.tokens.offline import llama3_tokenizer
from agenttuning.tokens.prepare import detect_layout, read_examples_any_layout, prepare


def ex(i: int, *, source="general", family="chat", replies=("Sure.",), flags=None) -> Example:
    turns = [Turn(role="user", content=f"question {i}")]
    for j, r in enumerate(replies):
        turns.append(Turn(role="assistant", content=r, loss=True if flags is None else flags[j]))
        if j < len(replies) - 1:
            turns.append(Turn(role="user", content=f"follow-up {j}"))
    return Example(id=f"{family}-{i}", source=source, family=family, turns=turns)


@pytest.fixture(scope="module")
def tok():
    return llama3_tokenizer()


def test_packed_rows_have_exact_labels_and_restarting_positions(tmp_path, tok):
    examples = [ex(i, replies=(f"Answer number {i}.", "And more."), flags=(False, True)) for i in range(20)]
    write_examples(examples, tmp_path / "in.jsonl")
    r = prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", max_len=256)
    table = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert len(table) == r.packing.rows and r.packing.rows < 20
    trained_texts = []
    for row in table:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 256
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert len(starts) == len(row["seq_lens"]) and starts[0] == 0
        trained = [t for t, y in zip(row["input_ids"], row["labels"]) if y != IGNORE_INDEX]
        assert all(y in (IGNORE_INDEX, t) for t, y in zip(row["input_ids"], row["labels"]))
        trained_texts.append(tok.decode(trained))
    # only the loss=True reply of each example is trained, with its end-of-turn token; never the loss=False one
    joined = "".join(trained_texts)
    assert joined.count("And more.<|eot_id|>") == 20 and "Answer number" not in joined
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["examples_in"] == 20 and stats["packing"]["rows"] == r.packing.rows
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == {"stage": "prepare", "files": ["train.parquet"], "rows": r.packing.rows, "max_len": 256,
                        "packed": True}


def test_unpacked_rows_keep_ids_and_sources(tmp_path, tok):
    write_examples([ex(i, source="agent" if i % 2 else "general") for i in range(6)], tmp_path / "in.jsonl")
    prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", packed=False, fmt="jsonl", max_len=128)
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"chat-{i}" for i in range(6)]
    assert [r["source"] for r in rows] == ["general", "agent"] * 3
    assert all("position_ids" not in r for r in rows)


def test_too_long_examples_are_cut_at_a_turn_boundary_and_reported(tmp_path, tok):
    long_reply = "word " * 400
    examples = [ex(0, replies=("short answer", long_reply))]
    write_examples(examples, tmp_path / "in.jsonl")
    r = prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", max_len=128, packed=False, fmt="jsonl")
    assert (r.length.cut, r.length.dropped) == (1, 0)
    row = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert tok.decode([t for t, y in zip(row["input_ids"], row["labels"]) if y != -100]) == "short answer<|eot_id|>"
    assert r.length.trained_lost > 400 and r.length_policies["drop@128"]["dropped"] == 1
    with pytest.raises(EmptyOutputError, match="1 longer than max_len=128 \\(policy drop\\)"):  # no rows: a failure
        prepare(tmp_path / "in.jsonl", tok, tmp_path / "out2", max_len=128, policy="drop")
    assert not (tmp_path / "out2").exists()


def test_unpacked_rows_keep_their_own_ids_when_an_earlier_example_is_dropped(tmp_path, tok):
    examples = [ex(0, replies=("word " * 400,)), ex(1, source="agent"), ex(2)]
    write_examples(examples, tmp_path / "in.jsonl")
    r = prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", max_len=128, packed=False, policy="drop", fmt="jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [(row["id"], row["source"]) for row in rows] == [("chat-1", "agent"), ("chat-2", "general")]
    assert [e.id for e in r.examples] == ["chat-1", "chat-2"]


def test_every_layout_is_detected_and_read(tmp_path, tok):
    examples = [ex(i, source="agent", family="db") for i in range(3)]
    write_agentinstruct(examples, tmp_path / "ai")
    write_sharegpt([ex(i) for i in range(3)], tmp_path / "sg.jsonl")
    assert len(read_examples_any_layout(tmp_path / "ai")[0]) == 3
    assert [e.source for e in read_examples_any_layout(tmp_path / "sg.jsonl")[0]] == ["general"] * 3
    assert detect_layout({"messages": []}) == "openai"
    assert detect_layout({"task": {}, "steps": []}) == "trajectories"
    with pytest.raises(ValueError, match="unrecognised"):
        detect_layout({"text": "hi"})
    r = prepare([tmp_path / "ai", tmp_path / "sg.jsonl"], tok, tmp_path / "out", max_len=512)
    assert r.sources == {"agent": 3, "general": 3}


def test_role_orders_a_template_refuses_are_counted_not_fatal(tmp_path, tok):
    odd = Example(id="odd", source="general", family="chat", turns=[
        Turn(role="assistant", content="I speak first.", loss=True), Turn(role="user", content="ok")])
    write_examples([ex(0), odd], tmp_path / "in.jsonl")
    r = prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", template="llama2-chat", max_len=256)
    assert r.rejected == {"template_rejects_roles": 1} and r.examples_in == 2 and r.length.examples == 1


def test_cli_prepare_shows_the_mask(tmp_path):
    write_examples([ex(i) for i in range(3)], tmp_path / "in.jsonl")
    out = CliRunner().invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--out",
                                   str(tmp_path / "o"), "--max-len", "256", "--show", "1"])
    assert out.exit_code == 0, out.output
    assert "packing efficiency" in out.output and "Sure." in out.output
    bad = CliRunner().invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--out",
                                   str(tmp_path / "o"), "--policy", "chop"])
    assert bad.exit_code == 2 and "--policy" in bad.output
