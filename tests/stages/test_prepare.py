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
from agenttuning.stages.prepare import PrepareConfig
from agenttuning.stages.manifest import read_stage_manifest
from agenttuning.stages.prepare import run as run_prepare


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
    r = run_prepare(PrepareConfig(max_len=256), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert len(table) == r.rows and r.rows < 20
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
    assert stats["examples_in"] == 20 and stats["packing"]["rows"] == r.rows
    manifest = read_stage_manifest(tmp_path / "out")
    assert manifest.stage == "prepare" and manifest.result == r.model_dump(mode="json")
    assert r.rows_file == "train.parquet" and manifest.config["max_len"] == 256 and manifest.config["pack"] is True


def test_unpacked_rows_keep_ids_and_sources(tmp_path, tok):
    write_examples([ex(i, source="agent" if i % 2 else "general") for i in range(6)], tmp_path / "in.jsonl")
    run_prepare(PrepareConfig(pack=False, format="jsonl", max_len=128), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"chat-{i}" for i in range(6)]
    assert [r["source"] for r in rows] == ["general", "agent"] * 3
    assert all("position_ids" not in r for r in rows)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_trainer_reads_back_the_records_the_stage_wrote(tmp_path, tok, fmt):
    """One record type from rendering to the trainer: the rows written are the fitted records' own, and the
    trainer's table gives the same records back (tokens, labels, turn ends), a cut one included."""
    from agenttuning.stages.prepare import prepare_examples
    from agenttuning.tokens.record import TokenRecord
    from agenttuning.train.data import load_token_table

    examples = [ex(i, source="agent", family="db", replies=("Sure.", "word " * (3 + 100 * (i == 2)))) for i in range(4)]
    write_examples(examples, tmp_path / "in.jsonl")
    config = PrepareConfig(pack=False, format=fmt, max_len=96)
    written, _, kept = prepare_examples(config, examples, tok)
    assert written == [record.to_row() for _, record in kept]
    assert [(r.id, r.source, r.family) for _, r in kept] == [(e.id, e.source, e.family) for e in examples]
    r = run_prepare(config, [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    assert r.length["cut"] == 1  # example 2's long second reply does not fit: cut after its first
    table, report = load_token_table(tmp_path / "out", max_len=96)
    assert report.length.kept == 4 and len(table) == 4
    back = [table.example(i) for i in range(len(table))]
    assert all(type(b) is TokenRecord for b in back)
    assert back == [TokenRecord(rec.input_ids, rec.labels, rec.turn_ends) for _, rec in kept]
    assert len(back[2].turn_ends) == 2 and len(back[0].turn_ends) == 4


def test_too_long_examples_are_cut_at_a_turn_boundary_and_reported(tmp_path, tok):
    long_reply = "word " * 400
    examples = [ex(0, replies=("short answer", long_reply))]
    write_examples(examples, tmp_path / "in.jsonl")
    r = run_prepare(PrepareConfig(max_len=128, pack=False, format="jsonl"), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    assert (r.length["cut"], r.length["dropped"]) == (1, 0)
    row = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert tok.decode([t for t, y in zip(row["input_ids"], row["labels"]) if y != -100]) == "short answer<|eot_id|>"
    assert r.length["trained_lost"] > 400 and r.length_policies["drop@128"]["dropped"] == 1
    with pytest.raises(EmptyOutputError, match="1 longer than max_len=128 \\(policy drop\\)"):  # no rows: a failure
        run_prepare(PrepareConfig(max_len=128, length_policy="drop"), [tmp_path / "in.jsonl"], tok, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_unpacked_rows_keep_their_own_ids_when_an_earlier_example_is_dropped(tmp_path, tok):
    examples = [ex(0, replies=("word " * 400,)), ex(1, source="agent"), ex(2)]
    write_examples(examples, tmp_path / "in.jsonl")
    r = run_prepare(PrepareConfig(max_len=128, pack=False, length_policy="drop", format="jsonl"), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [(row["id"], row["source"]) for row in rows] == [("chat-1", "agent"), ("chat-2", "general")]
    assert r.length["dropped"] == 1 and r.rows == 2


def test_inputs_of_different_layouts_are_prepared_together(tmp_path, tok):
    examples = [ex(i, source="agent", family="db") for i in range(3)]
    write_agentinstruct(examples, tmp_path / "ai")
    write_sharegpt([ex(i) for i in range(3)], tmp_path / "sg.jsonl")
    r = run_prepare(PrepareConfig(max_len=512), [tmp_path / "ai", tmp_path / "sg.jsonl"], tok, tmp_path / "out")
    assert r.sources == {"agent": 3, "general": 3}


def test_role_orders_a_template_refuses_are_counted_not_fatal(tmp_path, tok):
    odd = Example(id="odd", source="general", family="chat", turns=[
        Turn(role="assistant", content="I speak first.", loss=True), Turn(role="user", content="ok")])
    write_examples([ex(0), odd], tmp_path / "in.jsonl")
    r = run_prepare(PrepareConfig(chat_template="llama2-chat", max_len=256), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    assert r.rejected == {"template_rejects_roles": 1} and r.examples_in == 2 and r.length["examples"] == 1


def test_cli_prepare_shows_the_mask(tmp_path):
    write_examples([ex(i) for i in range(3)], tmp_path / "in.jsonl")
    out = CliRunner().invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--out",
                                   str(tmp_path / "o"), "--max-len", "256", "--show", "1"])
    assert out.exit_code == 0, out.output
    assert "packing efficiency" in out.output and "Sure." in out.output
    bad = CliRunner().invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--out",
                                   str(tmp_path / "o"), "--policy", "chop"])
    assert bad.exit_code == 2 and "--policy" in bad.output
