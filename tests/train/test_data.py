"""Prepared examples in, deterministic mixed packed global batches out."""

from __future__ import annotations

import json

import pytest

from agenttuning.tokens.record import TokenRecord
from agenttuning.train.batches import BatchPlanner, collate, deal, eval_micro_batches
from agenttuning.train.data import AGENT, GENERAL, TokenTable, load_token_table, load_sources, split_eval


def test_reads_parquet_and_jsonl(data):
    agent, general = data
    a, ra = load_token_table(agent, max_len=64, name="agent")
    g, rg = load_token_table(general, max_len=64, name="general")
    assert (len(a), len(g)) == (24, 48) and ra.length.kept == 24 and rg.length.dropped == 0
    ex = a.example(3)
    assert len(ex.input_ids) == len(ex.labels) and ex.labels[0] == -100 and ex.labels[-1] == 2
    assert a.trained == sum(sum(1 for y in a.example(i).labels[1:] if y != -100) for i in range(len(a)))


def test_long_examples_are_cut_after_an_assistant_turn_or_dropped(tmp_path):
    rows = [
        {"input_ids": list(range(10)), "labels": [-100] * 2 + [2, 3] + [-100] * 2 + [6, 7, 8, 9],
         "turn_ends": [2, 4, 6, 10]},
        {"input_ids": list(range(10)), "labels": [-100] * 8 + [8, 9], "turn_ends": [8, 10]},
        {"input_ids": [5, 6, 7], "labels": [-100, -100, -100], "turn_ends": [3]},
        {"input_ids": [5, 6, 7], "labels": [5, -100, -100], "turn_ends": [3]},
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "turn_ends": [3]},
    ]  # fmt: skip
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, report = load_token_table(path, max_len=8)
    assert len(table) == 2 and table.example(0).input_ids == [0, 1, 2, 3]  # cut after the first reply
    assert (report.length.cut, report.length.dropped, report.untrained) == (1, 1, 2)
    table, report = load_token_table(path, max_len=8, policy="drop")
    assert len(table) == 1 and report.length.dropped == 2


def test_a_table_row_is_the_record_it_holds():
    records = [TokenRecord([1, 2, 3], [-100, 2, 3], [1, 3], id="a"), TokenRecord([4, 5], [-100, 5], [2]),
               TokenRecord([6, 7, 8, 9], [-100, -100, 8, 9], [1, 2, 4])]  # fmt: skip
    table = TokenTable.from_records(records, "agent")
    unnamed = [TokenRecord(r.input_ids, r.labels, r.turn_ends) for r in records]  # the table keeps tokens only
    assert [table.example(i) for i in range(3)] == unnamed
    assert all(type(table.example(i)) is TokenRecord for i in range(3))
    part = table.subset([2, 0])
    assert [part.example(i) for i in range(2)] == [unnamed[2], unnamed[0]] and part.tokens == 7
    assert len(TokenTable.from_records([], "general")) == 0 and len(table.subset([])) == 0


def test_a_row_without_turn_ends_is_one_turn_dropped_when_too_long(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}) + "\n"
                    + json.dumps({"input_ids": list(range(10)), "labels": [-100] + list(range(1, 10))}) + "\n")
    table, report = load_token_table(path, max_len=8)
    assert len(table) == 1 and table.example(0) == TokenRecord([1, 2, 3], [-100, 2, 3], [3])
    assert (report.length.kept, report.length.cut, report.length.dropped) == (1, 0, 1)


def test_bad_rows_are_errors_naming_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agenttuning.jsonl import RecordError

    packed = tmp_path / "packed.parquet"
    pq.write_table(pa.Table.from_pylist([{"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 0],
                                          "seq_lens": [1, 1]}]), packed)  # fmt: skip
    with pytest.raises(RecordError, match="--no-pack") as e:
        load_token_table(packed, max_len=8)
    assert str(e.value).startswith(f"{packed}:1:")
    ends = tmp_path / "ends.jsonl"
    ends.write_text(json.dumps({"input_ids": [1, 2], "labels": [-100, 2], "turn_ends": [2]}) + "\n"
                    + json.dumps({"input_ids": [1, 2], "labels": [-100, 2], "turn_ends": [2, 1]}) + "\n")
    with pytest.raises(RecordError, match="turn_ends") as e:
        load_token_table(ends, max_len=8)
    assert str(e.value).startswith(f"{ends}:2:")
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"input_ids": [1, 2], "labels": [2]}) + "\n")
    with pytest.raises(RecordError, match="differ in length"):
        load_token_table(short, max_len=8)


def test_rows_without_labels_are_an_error(tmp_path):
    from agenttuning.jsonl import RecordError

    path = tmp_path / "bad.jsonl"
    path.write_text('{"input_ids": [1, 2]}\n')
    with pytest.raises(RecordError, match="bad.jsonl:1"):
        load_token_table(path, max_len=8)


def test_eval_split_is_seeded_disjoint_and_per_source(data):
    train, held = split_eval(50, 0.1, 3, "agent")
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == list(range(50))
    assert split_eval(50, 0.1, 3, "agent") == (train, held) != split_eval(50, 0.1, 3, "general")
    s = load_sources(*data, eta=0.2, max_len=64, policy="drop", eval_fraction=0.25, seed=0)
    assert (len(s.train[AGENT]), len(s.eval[AGENT]), len(s.train[GENERAL]), len(s.eval[GENERAL])) == (18, 6, 36, 12)
    only_general = load_sources(None, data[1], eta=0.0, max_len=64, policy="drop", eval_fraction=0.0, seed=0)
    assert len(only_general.train[AGENT]) == 0 and len(only_general.train[GENERAL]) == 48


def _tables(data):
    s = load_sources(*data, eta=0.3, max_len=64, policy="drop", eval_fraction=0.0, seed=0)
    return s.train


def test_planner_is_deterministic_and_resumes(data):
    agent, general = _tables(data)
    make = lambda: BatchPlanner(agent, general, eta=0.3, seed=5, max_len=64, n_slots=4, batch_size=8)
    a = make()
    batches = [a.next_batch() for _ in range(5)]
    b = make()
    b.next_batch(), b.next_batch()
    state = b.state_dict()
    c = make()
    c.load_state_dict(state)
    for x, y in zip(batches[2:], [c.next_batch() for _ in range(3)], strict=True):
        assert [[r.packed for r in s] for s in x.slots] == [[r.packed for r in s] for s in y.slots]
    assert all(b.examples == 8 for b in batches) and state["draws"] == 16


def test_global_batch_layout(data):
    agent, general = _tables(data)
    batch = BatchPlanner(agent, general, eta=0.3, seed=0, max_len=64, n_slots=4, batch_size=16).next_batch()
    rows = [r for slot in batch.slots for r in slot]
    assert all(len(r) <= 64 for r in rows) and sum(len(r) for r in rows) == batch.tokens
    assert batch.trained == sum(1 for r in rows for y in r.packed.labels if y != -100)
    assert sum(batch.trained_by_source) == batch.trained
    # process p's micro-batches are slots p, p + world, ...: two processes x two micro-batches cover all four slots
    mine = [batch.micro_batches(p, 2) for p in range(2)]
    assert [len(m) for m in mine] == [2, 2] and mine[0][0] is batch.slots[0] and mine[1][0] is batch.slots[1]


def test_batch_tokens_mode_and_epoch_steps(data):
    agent, general = _tables(data)
    planner = BatchPlanner(agent, general, eta=0.3, seed=0, max_len=64, n_slots=1, batch_tokens=128)
    batch = planner.next_batch()
    last = max(len(r.packed.input_ids) for s in batch.slots for r in s)
    assert 128 <= batch.tokens < 128 + 64 and last <= 64
    assert planner.epoch_draws() == 80  # ceil(24 / 0.3)
    by_size = BatchPlanner(agent, general, eta=0.3, seed=0, max_len=64, n_slots=1, batch_size=8)
    assert by_size.steps_for_draws(80) == 10 and planner.steps_for_draws(80) > 1


def test_deal_balances_tokens():
    slots = deal([60, 50, 40, 30, 20, 10], 3)
    loads = [sum([60, 50, 40, 30, 20, 10][i] for i in s) for s in slots]
    assert sorted(loads) == [70, 70, 70]
    assert deal([5], 3) == [[0], [], []]


def test_collate_marks_sources_and_isolates_padding(data):
    agent, general = _tables(data)
    batch = BatchPlanner(agent, general, eta=0.5, seed=1, max_len=64, n_slots=1, batch_size=6).next_batch()
    mb = collate(batch.slots[0], pad_id=0)
    assert mb.input_ids.shape == mb.source_ids.shape == mb.position_ids.shape
    assert set(mb.source_ids.unique().tolist()) <= {-1, 0, 1}
    assert (mb.input_ids[mb.source_ids == -1] == 0).all() and (mb.source_ids == -1).any()
    assert (mb.labels[mb.source_ids == -1] == -100).all() and mb.tokens == batch.tokens
    empty = collate([], pad_id=0)
    assert empty.input_ids.shape == (1, 1) and (empty.labels == -100).all() and empty.tokens == 0
    flat = collate(batch.slots[0], pad_id=0, flatten=True)
    assert flat.input_ids.shape[0] == 1 and "cu_seq_lens_q" in flat.extra


def test_eval_batches_are_equal_in_number_on_every_process(data):
    table = TokenTable.from_records([TokenRecord([1, 5, 6], [-100, 5, 6], [1, 3])] * 7, "agent")
    per = [eval_micro_batches(table, AGENT, max_len=3, pack=True, rows_per_batch=2, process_index=p,
                              num_processes=3) for p in range(3)]  # fmt: skip
    assert [len(b) for b in per] == [2, 2, 2]
    assert sum(len(rows) for b in per for rows in b) == 7
