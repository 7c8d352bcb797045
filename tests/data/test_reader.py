"""The one reader (issue 12, item 4): every layout in every container, told by its first record; a folder mixing
layouts; bad records named by file and line; Hugging Face dataset ids through the real ``datasets.load_dataset``,
and a clear error within seconds when the Hub cannot be reached."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.formats import (agentinstruct_schema, to_agentinstruct_record, to_openai_record,
                                      to_sharegpt_record)  # fmt: skip
from agenttuning.data.reader import DataSourceError, detect_layout, read_data
from agenttuning.data.rows import write_rows
from agenttuning.jsonl import RecordError
from agenttuning.schema import Trajectory, Turn
from tests.data.builders import make_traj

datasets = pytest.importorskip("datasets")


def chat(i: int, *, source: str = "general", family: str = "db", untrained_first: bool = False) -> Example:
    """A two-reply conversation (the first reply untrained when ``untrained_first``, as in-context turns are)."""
    turns = [Turn(role="user", content=f"question {i}"),
             Turn(role="assistant", content=f"Ok {i}.", loss=not untrained_first),
             Turn(role="user", content=f"more {i}"),
             Turn(role="assistant", content=f"answer {i}", loss=True)]  # fmt: skip
    return Example(id=f"{family}-{i}", source=source, family=family, turns=turns)  # type: ignore[arg-type]


AGENT = [chat(i, source="agent", untrained_first=True) for i in range(3)]
GENERAL = [chat(i) for i in range(3)]


def traj(i: int) -> Trajectory:
    """A finished db trajectory whose task carries a payload (parquet cannot store an empty struct)."""
    t = make_traj(f"db-{i}", n_steps=2 + i)
    return t.model_copy(update={"task": t.task.model_copy(update={"payload": {"answer": str(i)}})})


TRAJS = [traj(i) for i in range(3)]

# layout -> (records, the examples they read back as from a file named db.<ext>)
RECORDS = {
    "examples": ([e.model_dump(mode="json") for e in GENERAL], GENERAL),
    "agentinstruct": ([to_agentinstruct_record(e) for e in AGENT], AGENT),
    "sharegpt": ([to_sharegpt_record(e) for e in GENERAL], GENERAL),
    "openai": ([to_openai_record(e) for e in GENERAL], GENERAL),
    "trajectories": ([t.model_dump(mode="json") for t in TRAJS], [from_trajectory(t) for t in TRAJS]),
}


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
@pytest.mark.parametrize("layout", list(RECORDS))
def test_every_layout_in_every_container_is_detected_and_read(tmp_path, layout, container):
    records, expected = RECORDS[layout]
    path = tmp_path / f"db.{container}"
    write_rows(path, records)
    loaded = read_data(path)
    assert loaded.layout == layout and loaded.layouts == {str(path): layout}
    assert loaded.examples == expected and loaded.files == [path]


def test_detection_reads_the_keys_of_one_record():
    assert detect_layout(GENERAL[0].model_dump(mode="json")) == "examples"
    assert detect_layout({"task": {}, "steps": []}) == "trajectories"
    assert detect_layout({"messages": []}) == "openai"
    assert detect_layout(to_agentinstruct_record(AGENT[0])) == "agentinstruct"
    assert detect_layout(to_sharegpt_record(GENERAL[0])) == "sharegpt"  # no loss flags
    # loss keys that are all null (a parquet column shared with flagged rows) are no flags
    assert detect_layout({"conversations": [{"from": "human", "value": "hi", "loss": None}]}) == "sharegpt"
    # flags on a role AgentInstruct never has: a ShareGPT record written with explicit flags
    system = {"conversations": [{"from": "system", "value": "be brief", "loss": None},
                                {"from": "human", "value": "hi", "loss": None},
                                {"from": "gpt", "value": "hello", "loss": False}]}  # fmt: skip
    assert detect_layout(system) == "sharegpt"
    with pytest.raises(ValueError, match="unrecognised record layout: expected 'turns'.*got keys \\['text'\\]"):
        detect_layout({"text": "hi"})


def test_a_folder_mixing_layouts_is_read_file_by_file(tmp_path):
    write_rows(tmp_path / "db.jsonl", RECORDS["agentinstruct"][0])
    write_rows(tmp_path / "chat.json", RECORDS["sharegpt"][0])
    write_rows(tmp_path / "msgs" / "oa.parquet", RECORDS["openai"][0])
    write_rows(tmp_path / "runs" / "db.jsonl", RECORDS["trajectories"][0])
    (tmp_path / "stats.json").write_text(json.dumps({"kept": 3}))  # what stages write beside data: not read
    loaded = read_data(tmp_path)
    assert loaded.layouts == {str(tmp_path / "chat.json"): "sharegpt", str(tmp_path / "db.jsonl"): "agentinstruct",
                              str(tmp_path / "msgs" / "oa.parquet"): "openai",
                              str(tmp_path / "runs" / "db.jsonl"): "trajectories"}  # fmt: skip
    assert loaded.layout is None  # the files differ
    by_file = [(e.source, e.family) for e in loaded.examples]
    expected = [("general", "chat"), ("agent", "db"), ("general", "oa"), ("agent", "db")]  # sorted file order
    assert by_file == [kind for kind in expected for _ in range(3)]


def test_overrides_fix_the_layout_source_and_family(tmp_path):
    write_rows(tmp_path / "a.jsonl", RECORDS["agentinstruct"][0])
    as_chat = read_data(tmp_path / "a.jsonl", layout="sharegpt", family="mine")
    assert as_chat.layout == "sharegpt" and {(e.source, e.family) for e in as_chat.examples} == {("general", "mine")}
    general = read_data(tmp_path / "a.jsonl", source_kind="general")
    assert general.layout == "agentinstruct" and [e.source for e in general.examples] == ["general"] * 3
    with pytest.raises(ValueError, match="unknown layout 'csv'"):
        read_data(tmp_path / "a.jsonl", layout="csv")  # type: ignore[arg-type]


def test_empty_and_assistantless_conversations_are_counted_out(tmp_path):
    rows = [*RECORDS["sharegpt"][0], {"id": "e", "conversations": []},
            {"id": "u", "conversations": [{"from": "human", "value": "anyone?"}]}]  # fmt: skip
    write_rows(tmp_path / "chat.jsonl", rows)
    loaded = read_data(tmp_path / "chat.jsonl")
    assert len(loaded.examples) == 3 and loaded.dropped == {"empty": 1, "no_assistant": 1}


def test_a_bad_record_is_named_by_file_and_line(tmp_path):
    bad = [*RECORDS["agentinstruct"][0]]
    bad[1] = {"id": "x", "conversations": [{"from": "human", "value": "q", "loss": True}]}
    write_rows(tmp_path / "db.jsonl", bad)
    with pytest.raises(RecordError, match=r"db\.jsonl:2: conversations\[0\]: a human turn cannot carry loss=True"):
        read_data(tmp_path / "db.jsonl")
    write_rows(tmp_path / "p" / "db.parquet", bad, schema=agentinstruct_schema())
    with pytest.raises(RecordError, match=r"db\.parquet:2: row 2: conversations\[0\]: a human turn"):
        read_data(tmp_path / "p")
    (tmp_path / "q" / "odd.jsonl").parent.mkdir()
    (tmp_path / "q" / "odd.jsonl").write_text('\n{"text": "hi"}\n')
    with pytest.raises(RecordError, match=r"odd\.jsonl:2: unrecognised record layout"):
        read_data(tmp_path / "q")


def test_a_missing_data_file_stays_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_data(tmp_path / "chat.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_data("missing/chat.jsonl")  # shaped like a data file: never sent to the Hub


# ------------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The Hub endpoint is a local port nobody listens on: this machine's situation, on any machine."""
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_an_unreachable_hub_is_a_clear_error_within_seconds(hub_unreachable, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DataSourceError) as err:
        read_data("THUDM/AgentInstruct", cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 10  # datasets' own retries take ~25 s
    msg = str(err.value)
    assert msg.startswith("'THUDM/AgentInstruct' is not a local file or folder, and the Hugging Face Hub")
    assert "cannot be reached" in msg and "hf download THUDM/AgentInstruct --repo-type dataset" in msg
    assert "HF_HUB_OFFLINE=1" in msg and isinstance(err.value, ValueError)


def test_the_cli_prints_the_offline_error_in_one_line(hub_unreachable, tmp_path):
    r = CliRunner().invoke(app, ["prepare", "THUDM/AgentInstruct", "--tokenizer", "llama3", "--out",
                                 str(tmp_path / "out")])  # fmt: skip
    assert r.exit_code == 2 and "cannot be reached" in " ".join(r.output.split())
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_offline_mode_without_a_cached_copy_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when datasets loads
    with pytest.raises(DataSourceError, match=r"offline mode \(HF_HUB_OFFLINE\) finds no copy of it in the datasets"):
        read_data("THUDM/AgentInstruct", cache_dir=tmp_path / "cache")


def _published_repo(root: Path, families=("os", "db")) -> tuple[Path, dict[str, list[Example]]]:
    """A dataset repository laid out as THUDM/AgentInstruct is: a README whose configs name one split per family,
    ``data/<family>-00000-of-00001-<hash>.parquet`` in the published schema."""
    repo = root / "AgentInstruct"
    card = ["---", "configs:", "- config_name: default", "  data_files:"]
    expected = {}
    for fam in families:
        exs = [chat(i, source="agent", family=fam, untrained_first=True) for i in range(2)]
        write_rows(repo / "data" / f"{fam}-00000-of-00001-9f2c.parquet", [to_agentinstruct_record(e) for e in exs],
                   schema=agentinstruct_schema())  # fmt: skip
        card += [f"  - split: {fam}", f"    path: data/{fam}-*"]
        expected[fam] = exs
    (repo / "README.md").write_text("\n".join([*card, "---", "# AgentInstruct (test copy)", ""]))
    return repo, expected


def test_a_dataset_repo_loads_through_datasets_with_split_names_as_families(tmp_path):
    repo, expected = _published_repo(tmp_path)
    loaded = read_data(f"hf:{repo}", cache_dir=tmp_path / "cache")  # datasets.load_dataset(repo): its splits
    assert loaded.layouts == {f"{repo}[os]": "agentinstruct", f"{repo}[db]": "agentinstruct"}
    assert loaded.examples == expected["os"] + expected["db"]
    plain = read_data(repo)  # the same folder read file by file: the family from each file's name
    assert sorted(plain.examples, key=lambda e: e.id) == sorted(loaded.examples, key=lambda e: e.id)


def test_a_dataset_id_reads_a_cached_copy_offline(monkeypatch, tmp_path):
    """``HF_HUB_OFFLINE=1`` with the dataset in the datasets cache, as ``load_dataset('THUDM/AgentInstruct')``
    online leaves it: the cache is made here by loading the local copy and filing it under the Hub id's name."""
    repo, expected = _published_repo(tmp_path)
    cache = tmp_path / "cache"
    datasets.load_dataset(str(repo), cache_dir=str(cache))
    (built,) = [d for d in cache.iterdir() if d.is_dir()]
    shutil.copytree(built, cache / "THUDM___agent_instruct")  # the folder datasets keeps THUDM/AgentInstruct in
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    loaded = read_data("THUDM/AgentInstruct", cache_dir=cache)
    assert set(loaded.layouts) == {"THUDM/AgentInstruct[os]", "THUDM/AgentInstruct[db]"}
    assert sorted(loaded.examples, key=lambda e: e.id) == sorted(expected["os"] + expected["db"], key=lambda e: e.id)


def test_a_chat_set_with_a_train_split_is_named_for_the_dataset(tmp_path):
    repo = tmp_path / "Tiny_Chat"
    records = [*RECORDS["sharegpt"][0], {"id": "e", "conversations": []}]
    write_rows(repo / "data" / "train-00000-of-00001.parquet", records)
    loaded = read_data(f"hf:{repo}", cache_dir=tmp_path / "cache")
    assert loaded.layouts == {f"{repo}[train]": "sharegpt"} and loaded.dropped == {"empty": 1}
    assert {(e.source, e.family) for e in loaded.examples} == {("general", "tiny_chat")}
    assert [e.turns for e in loaded.examples] == [e.turns for e in GENERAL]


def test_a_bad_row_of_a_dataset_split_is_named_by_split_and_row(tmp_path):
    repo = tmp_path / "chat"
    write_rows(repo / "data" / "train-00000-of-00001.jsonl",
               [*RECORDS["openai"][0], {"id": "b", "messages": [{"role": "robot", "content": "beep"}]}])  # fmt: skip
    with pytest.raises(RecordError, match=r"chat\[train\]:4: row 4: messages\[0\] needs 'role'"):
        read_data(f"hf:{repo}", cache_dir=tmp_path / "cache")
