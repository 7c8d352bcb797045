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
from agenttuning.data.reader import read_data
from agenttuning.stages import decontaminate, filter, mix
from agenttuning.eval.general import load_general_examples
from agenttuning.jsonl import AppendWriter, RecordError
from agenttuning.schema import Turn
from agenttuning.tokens.offline import llama3_tokenizer
from agenttuning.stages.prepare import PrepareConfig
from agenttuning.stages.prepare import run as run_prepare
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


def test_decontaminate_twice_into_one_folder_keeps_only_the_second_runs_environments(tmp_path):
    out = tmp_path / "ai"
    config = decontaminate.DecontaminateConfig()
    first = decontaminate.run(config, [_trajs(tmp_path / "a.jsonl", "db-v1", "kg-v1")], out, index=NO_INDEX)
    assert first.records == {"db": 1, "kg": 1}
    second = decontaminate.run(config, [_trajs(tmp_path / "b.jsonl", "db-v1")], out, index=NO_INDEX)
    assert second.records == {"db": 1}
    assert sorted(p.name for p in out.iterdir()) == ["db.jsonl", "manifest.json", "stats.json"]  # kg is gone
    from agenttuning.data.formats import read_agentinstruct

    assert {e.family for e in read_agentinstruct(out).examples} == {"db"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ai.")]  # no temporary folder left behind


def test_prepare_packed_then_unpacked_leaves_no_packed_rows(tmp_path, tok):
    write_examples([_chat(i) for i in range(4)], tmp_path / "in.jsonl")
    out = tmp_path / "prepared"
    run_prepare(PrepareConfig(max_len=128, pack=True, format="parquet"), [tmp_path / "in.jsonl"], tok, out)
    run_prepare(PrepareConfig(max_len=128, pack=False, format="jsonl"), [tmp_path / "in.jsonl"], tok, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stats.json", "train.jsonl"]
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("position_ids" not in r for r in rows)


def _prepared(tmp_path: Path, tok, name: str, n: int) -> Path:
    write_examples([_chat(i, "agent" if name == "agent" else "general") for i in range(n)], tmp_path / f"{name}.jsonl")
    run_prepare(PrepareConfig(max_len=128, pack=False), [tmp_path / f"{name}.jsonl"], tok, tmp_path / f"p-{name}")
    return tmp_path / f"p-{name}"


def test_mix_replaces_its_earlier_output_and_refuses_a_foreign_folder(tmp_path, tok):
    agent = _prepared(tmp_path, tok, "agent", 2)
    out = tmp_path / "mix"
    mix.run(mix.MixConfig(eta=1.0, n=5), agent, None, out)
    (out / "left-over.jsonl").write_text("{}\n")  # e.g. a file an earlier version wrote
    assert mix.run(mix.MixConfig(eta=1.0, n=3), agent, None, out).n == 3
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "metrics.json"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no earlier mix output.*--overwrite"):
        mix.run(mix.MixConfig(eta=1.0, n=3), agent, None, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    r = runner.invoke(app, ["mix", "--agent", str(agent), "--out", str(mine), "--eta", "1", "-n", "2"])
    assert r.exit_code == 2 and "--overwrite" in r.output and (mine / "notes.txt").exists()
    r = runner.invoke(app, ["mix", "--agent", str(agent), "--out", str(mine), "--eta", "1", "-n", "2", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "metrics.json"]


def test_an_output_that_holds_or_lies_in_its_input_is_refused(tmp_path, tok):
    data = tmp_path / "data"
    data.mkdir()
    write_examples([_chat(i) for i in range(2)], data / "in.jsonl")
    with pytest.raises(ValueError, match="holds the input"):
        run_prepare(PrepareConfig(max_len=128), [data / "in.jsonl"], tok, data, overwrite=True)
    with pytest.raises(ValueError, match="inside the input folder"):  # prepare reads folders recursively
        run_prepare(PrepareConfig(max_len=128), [data], tok, data / "prepared")
    traj = _trajs(data / "t.jsonl", "db-v1")
    with pytest.raises(ValueError, match="holds the input"):
        filter.run(filter.FilterConfig(), [traj], traj)
    assert (data / "in.jsonl").exists() and traj.exists()


def test_a_failed_run_leaves_the_earlier_output_as_it_was(tmp_path):
    out = tmp_path / "kept"
    filter.run(filter.FilterConfig(), [_trajs(tmp_path / "a.jsonl", "db-v1", "kg-v1")], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(EmptyOutputError):
        filter.run(filter.FilterConfig(), [_trajs(tmp_path / "b.jsonl", "db-v1", reward=0.0)], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "kept"]


# ------------------------------------------------------------------------------------------------------------
# Kind 9: success that produced nothing


def test_filter_that_keeps_nothing_fails_with_the_drop_counts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyOutputError, match="no trajectory kept of 0 read from .*empty.jsonl .nothing to filter"):
        filter.run(filter.FilterConfig(), [tmp_path / "empty.jsonl"], tmp_path / "o1")
    low = _trajs(tmp_path / "low.jsonl", "db-v1", "db-v1", reward=0.0)
    with pytest.raises(EmptyOutputError, match="no trajectory kept of 2 .*low_reward 2"):
        filter.run(filter.FilterConfig(), [low], tmp_path / "o2")
    r = runner.invoke(app, ["filter", str(low), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "low_reward 2" in r.output and "Traceback" not in r.output
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_a_source_with_no_usable_example_fails_with_the_reason(tmp_path, tok):
    general = tmp_path / "g.json"
    general.write_text(json.dumps([{"id": "e", "conversations": []}, {"id": "u", "conversations": [
        {"from": "human", "value": "hi"}]}]))
    with pytest.raises(EmptyOutputError, match="records dropped on reading: empty 1, no_assistant 1"):
        run_prepare(PrepareConfig(max_len=128, pack=False), [general], tok, tmp_path / "p")
    agent = _prepared(tmp_path, tok, "agent", 2)
    with pytest.raises(EmptyOutputError, match="eta=0.5 draws general examples, but there are none"):
        mix.run(mix.MixConfig(eta=0.5), agent, None, tmp_path / "m")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        mix.MixConfig(eta=1.0, n=0)
    r = runner.invoke(app, ["prepare", str(general), "--tokenizer", "llama3", "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "no_assistant 1" in " ".join(r.output.split())
    r = runner.invoke(app, ["mix", "--agent", str(agent), "--eta", "0.5", "--out", str(tmp_path / "m")])
    assert r.exit_code == 1 and "there are none" in r.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


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
        run_prepare(PrepareConfig(max_len=128), [tmp_path / "in.jsonl"], own, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown chat template 'no-such'"):
        run_prepare(PrepareConfig(max_len=128, chat_template="no-such"), [tmp_path / "in.jsonl"], own, tmp_path / "out")
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
        run_prepare(PrepareConfig(chat_template="llama2-chat", max_len=256), [tmp_path / "odd.jsonl"], tok, tmp_path / "out")
    write_examples([_chat(i) for i in range(3)], tmp_path / "in.jsonl")
    with pytest.raises(EmptyOutputError, match=r"3 examples read, 3 longer than max_len=8"):
        run_prepare(PrepareConfig(max_len=8), [tmp_path / "in.jsonl"], tok, tmp_path / "out")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyOutputError, match="empty.jsonl: no examples: nothing to prepare"):
        run_prepare(PrepareConfig(max_len=8), [tmp_path / "empty.jsonl"], tok, tmp_path / "out")
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
        read_data(bad)


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
        read_data(tmp_path / "nums.json")
    (tmp_path / "odd.jsonl").write_text('\n{"text": "hi"}\n')
    with pytest.raises(RecordError, match=r"odd\.jsonl:2: unrecognised record layout"):
        read_data(tmp_path / "odd.jsonl")
    with pytest.raises(RecordError, match=r"odd\.jsonl:2: unrecognised record layout"):
        load_general_examples(tmp_path / "odd.jsonl")


def test_example_records_read_from_any_container(tmp_path):
    examples = [_chat(i) for i in range(3)]
    write_sharegpt(examples, tmp_path / "sg.json")
    write_examples(examples, tmp_path / "ex.jsonl")
    (tmp_path / "ex.json").write_text(json.dumps([e.model_dump(mode="json") for e in examples]))
    assert read_data(tmp_path / "ex.json").examples == examples
    assert read_data(tmp_path / "ex.jsonl").examples == examples
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
