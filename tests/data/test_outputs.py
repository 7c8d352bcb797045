"""Stage outputs: a folder holds exactly one run's files, a stage that writes nothing fails with the reason, and
every reader error names the file and line (issue #11, kinds 7, 8 and 9)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.data.decontam import ContaminationIndex
from agenttuning.data.example import Example
from agenttuning.data.formats import read_sharegpt, write_examples, write_sharegpt
from agenttuning.data.outputs import EmptyOutputError
from agenttuning.data.stages import build_agentinstruct, mix_datasets
from agenttuning.eval.general import load_general_examples
from agenttuning.jsonl import AppendWriter, RecordError
from agenttuning.schema import Turn
from agenttuning.tokens.offline import llama3_tokenizer
from agenttuning.tokens.prepare import read_examples_any_layout, prepare
from tests.data.builders import make_traj

NO_INDEX = ContaminationIndex.build([])
runner = CliRunner()


@pytest.fixture(scope="module")
def tok():
    return llama3_tokenizer()


def _trajs(path: Path, *envs: str, reward: float = 1.0) -> Path:
    with AppendWriter(path) as w:
        for i, env in enumerate(envs):
            w.write(make_traj(f"{env}-train-{i:05d}", env=env, reward=reward))
    return path


def _chat(i: int, source: str = "general") -> Example:
    return Example(id=f"c{i}", source=source, family="chat", turns=[
        Turn(role="user", content=f"Tell me about topic {i}."), Turn(role="assistant", content="Sure.", loss=True)])


# ------------------------------------------------------------------------------------------------------------
# Kind 7: stale files read as new


def test_filter_twice_into_one_folder_keeps_only_the_second_runs_environments(tmp_path):
    out = tmp_path / "ai"
    first = build_agentinstruct(_trajs(tmp_path / "a.jsonl", "db-v1", "kg-v1"), out, index=NO_INDEX)
    assert first.written == {"db": 1, "kg": 1}
    second = build_agentinstruct(_trajs(tmp_path / "b.jsonl", "db-v1"), out, index=NO_INDEX)
    assert second.written == {"db": 1}
    assert sorted(p.name for p in out.iterdir()) == ["db.jsonl", "manifest.json", "stats.json"]  # kg is gone
    from agenttuning.data.formats import read_agentinstruct

    assert {e.family for e in read_agentinstruct(out).examples} == {"db"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ai.")]  # no temporary folder left behind


def test_prepare_packed_then_unpacked_leaves_no_packed_rows(tmp_path, tok):
    write_examples([_chat(i) for i in range(4)], tmp_path / "in.jsonl")
    out = tmp_path / "prepared"
    prepare(tmp_path / "in.jsonl", tok, out, max_len=128, packed=True, fmt="parquet")
    prepare(tmp_path / "in.jsonl", tok, out, max_len=128, packed=False, fmt="jsonl")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stats.json", "train.jsonl"]
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("position_ids" not in r for r in rows)


def test_mix_replaces_its_earlier_output_and_refuses_a_foreign_folder(tmp_path):
    agent = tmp_path / "ai"
    build_agentinstruct(_trajs(tmp_path / "a.jsonl", "db-v1", "db-v1"), agent, index=NO_INDEX)
    out = tmp_path / "mix"
    mix_datasets(agent, None, out, eta=1.0, n=5, index=NO_INDEX)
    (out / "left-over.jsonl").write_text("{}\n")  # e.g. a file an earlier version wrote
    mix_datasets(agent, None, out, eta=1.0, n=3, index=NO_INDEX)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "train.jsonl"]
    assert len((out / "train.jsonl").read_text().splitlines()) == 3

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no earlier mix output.*--overwrite"):
        mix_datasets(agent, None, mine, eta=1.0, n=3, index=NO_INDEX)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    r = runner.invoke(app, ["mix", str(agent), "--out", str(mine), "--eta", "1", "-n", "2"])
    assert r.exit_code == 2 and "--overwrite" in r.output and (mine / "notes.txt").exists()
    r = runner.invoke(app, ["mix", str(agent), "--out", str(mine), "--eta", "1", "-n", "2", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.json", "train.jsonl"]


def test_an_output_that_holds_or_lies_in_its_input_is_refused(tmp_path, tok):
    data = tmp_path / "data"
    data.mkdir()
    write_examples([_chat(i) for i in range(2)], data / "in.jsonl")
    with pytest.raises(ValueError, match="holds the input"):
        prepare(data / "in.jsonl", tok, data, max_len=128, overwrite=True)
    with pytest.raises(ValueError, match="inside the input folder"):  # prepare reads folders recursively
        prepare(data, tok, data / "prepared", max_len=128)
    traj = _trajs(data / "t.jsonl", "db-v1")
    with pytest.raises(ValueError, match="holds the input"):
        build_agentinstruct(traj, traj, index=NO_INDEX)
    assert (data / "in.jsonl").exists() and traj.exists()


def test_a_failed_run_leaves_the_earlier_output_as_it_was(tmp_path):
    out = tmp_path / "ai"
    build_agentinstruct(_trajs(tmp_path / "a.jsonl", "db-v1", "kg-v1"), out, index=NO_INDEX)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(EmptyOutputError):
        build_agentinstruct(_trajs(tmp_path / "b.jsonl", "db-v1", reward=0.0), out, index=NO_INDEX)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "ai", "b.jsonl"]


# ------------------------------------------------------------------------------------------------------------
# Kind 9: success that produced nothing


def test_filter_that_keeps_nothing_fails_with_the_drop_counts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyOutputError, match="no trajectories in .*empty.jsonl"):
        build_agentinstruct(tmp_path / "empty.jsonl", tmp_path / "o1", index=NO_INDEX)
    low = _trajs(tmp_path / "low.jsonl", "db-v1", "db-v1", reward=0.0)
    with pytest.raises(EmptyOutputError, match="no trajectory kept of 2 .*low_reward 2"):
        build_agentinstruct(low, tmp_path / "o2.jsonl", index=NO_INDEX)
    r = runner.invoke(app, ["filter", str(low), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "low_reward 2" in r.output and "Traceback" not in r.output
    assert not any((tmp_path / name).exists() for name in ("o1", "o2.jsonl", "o3"))


def test_mix_with_no_usable_source_fails_with_the_reason(tmp_path):
    agent = tmp_path / "ai"
    build_agentinstruct(_trajs(tmp_path / "a.jsonl", "db-v1"), agent, index=NO_INDEX)
    general = tmp_path / "g.json"
    general.write_text(json.dumps([{"id": "e", "conversations": []}, {"id": "u", "conversations": [
        {"from": "human", "value": "hi"}]}]))
    with pytest.raises(EmptyOutputError, match="no usable general example .*empty 1, no_assistant 1"):
        mix_datasets(agent, general, tmp_path / "m", eta=0.2, index=NO_INDEX)
    with pytest.raises(EmptyOutputError, match="no general data given"):
        mix_datasets(agent, None, tmp_path / "m", eta=0.5, index=NO_INDEX)
    with pytest.raises(ValueError, match="n must be at least 1"):
        mix_datasets(agent, None, tmp_path / "m", eta=1.0, n=0, index=NO_INDEX)
    r = runner.invoke(app, ["mix", str(agent), "--general", str(general), "--out", str(tmp_path / "m")])
    assert r.exit_code == 1 and "no_assistant 1" in r.output
    assert not (tmp_path / "m").exists()


# a Jinja template that moves the system message after the first user turn: later turns rewrite earlier text, so
# no exact per-turn mask exists; the template check says so
REORDERING = ("{% for m in messages if m.role != 'system' %}<|start_header_id|>{{ m.role }}<|end_header_id|>"
              "{{ m.content }}<|eot_id|>{% if loop.first %}{% for s in messages if s.role == 'system' %}"
              "SYSTEM: {{ s.content }}{% endfor %}{% endif %}{% endfor %}")


def test_prepare_with_a_template_it_cannot_use_fails_with_the_template_check(tmp_path):
    write_examples([_chat(i) for i in range(3)], tmp_path / "in.jsonl")
    own = copy.deepcopy(llama3_tokenizer())  # the builtin is cached per process: never change it in place
    own.chat_template = REORDERING
    with pytest.raises(ValueError, match="chat template .*not prefix-preserving"):
        prepare(tmp_path / "in.jsonl", own, tmp_path / "out", max_len=128)
    with pytest.raises(ValueError, match="unknown chat template 'no-such'"):
        prepare(tmp_path / "in.jsonl", own, tmp_path / "out", max_len=128, template="no-such")
    assert not (tmp_path / "out").exists()
    r = runner.invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--template", "no-such",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "unknown chat template" in r.output and "Traceback" not in r.output


def test_prepare_where_every_example_is_refused_or_too_long_fails_with_counts_and_first_message(tmp_path, tok):
    odd = [Example(id=f"odd{i}", source="general", family="chat", turns=[
        Turn(role="assistant", content="I speak first.", loss=True), Turn(role="user", content="ok")])
        for i in range(2)]  # fmt: skip
    write_examples(odd, tmp_path / "odd.jsonl")
    with pytest.raises(EmptyOutputError, match=r"refused template_rejects_roles 2 \(first: odd0: "):
        prepare(tmp_path / "odd.jsonl", tok, tmp_path / "out", template="llama2-chat", max_len=256)
    write_examples([_chat(i) for i in range(3)], tmp_path / "in.jsonl")
    with pytest.raises(EmptyOutputError, match=r"3 examples read .*3 longer than max_len=8"):
        prepare(tmp_path / "in.jsonl", tok, tmp_path / "out", max_len=8)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyOutputError, match="no examples in"):
        prepare(tmp_path / "empty.jsonl", tok, tmp_path / "out", max_len=8)
    r = runner.invoke(app, ["prepare", str(tmp_path / "in.jsonl"), "--tokenizer", "llama3", "--max-len", "8",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "longer than max_len=8" in " ".join(r.output.split())
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------
# Kind 8: reader errors name the file and line


def test_invalid_utf8_in_a_json_list_names_file_and_line(tmp_path):
    bad = tmp_path / "chat.json"
    bad.write_bytes(b'[\n{"id": "a", "conversations": []},\n{"id": "b\xff\xfe", "conversations": []}\n]\n')
    with pytest.raises(RecordError, match=r"chat\.json:3: invalid UTF-8"):
        read_sharegpt(bad)
    with pytest.raises(RecordError, match=r"chat\.json:3: invalid UTF-8"):
        load_general_examples(bad)
    with pytest.raises(RecordError, match=r"chat\.json:3: invalid UTF-8"):
        read_examples_any_layout(bad)


def test_deeply_nested_json_names_the_file_not_a_recursion_traceback(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('[{"id": "a", "conversations": []},\n' + "[" * 100_000 + "\n")
    with pytest.raises(RecordError, match=r"deep\.json:2: JSON nested too deeply"):
        read_sharegpt(deep)
    with pytest.raises(RecordError, match=r"deep\.json:2: JSON nested too deeply"):
        load_general_examples(deep)
    r = runner.invoke(app, ["prepare", str(deep), "--tokenizer", "llama3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "deep.json:2: JSON nested too deeply" in " ".join(r.output.split())
    assert "Traceback" not in r.output and "RecursionError" not in r.output


def test_records_of_the_wrong_shape_are_named_by_file_and_row(tmp_path):
    (tmp_path / "nums.json").write_text("[1, 2]")
    with pytest.raises(RecordError, match=r"nums\.json:1: row 1: expected a JSON object, got int"):
        load_general_examples(tmp_path / "nums.json")  # was a TypeError with no place, a traceback in the CLI
    with pytest.raises(RecordError, match=r"nums\.json:1: row 1: expected a JSON object"):
        read_examples_any_layout(tmp_path / "nums.json")
    (tmp_path / "odd.jsonl").write_text('\n{"text": "hi"}\n')
    with pytest.raises(RecordError, match=r"odd\.jsonl:2: unrecognised record layout"):
        read_examples_any_layout(tmp_path / "odd.jsonl")
    with pytest.raises(RecordError, match=r"odd\.jsonl:2: the record has none of"):
        load_general_examples(tmp_path / "odd.jsonl")


def test_example_records_read_from_any_container(tmp_path):
    examples = [_chat(i) for i in range(3)]
    write_sharegpt(examples, tmp_path / "sg.json")
    write_examples(examples, tmp_path / "ex.jsonl")
    (tmp_path / "ex.json").write_text(json.dumps([e.model_dump(mode="json") for e in examples]))
    assert read_examples_any_layout(tmp_path / "ex.json")[0] == examples
    assert read_examples_any_layout(tmp_path / "ex.jsonl")[0] == examples
    assert load_general_examples(tmp_path / "ex.json") == examples


def test_a_corrupt_parquet_is_named_not_a_pyarrow_traceback(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "g.parquet"
    convs = [[{"from": "human", "value": f"question {i} " * 20}] for i in range(50)]
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(50)], "conversations": convs}), path,
                   compression="none", use_dictionary=False)  # fmt: skip
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    raw[4:len(raw) - footer] = b"\xff" * (len(raw) - footer - 4)  # the data pages: the file opens, no row reads
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=r"g\.parquet:1: row 1: unreadable parquet"):
        read_sharegpt(path)
