"""Mistakes in a pipeline config are found when it loads, each naming the key; a prepare stage with no rows fails
with the reason and records no manifest (issue #11, kinds 9 and 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.pipeline.config import PipelineConfigError, load_pipeline_config

runner = CliRunner()


def _load(*overrides: str):
    return load_pipeline_config("scratch", list(overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("model.name=./no/such/model", r"model\.name: no such folder './no/such/model'"),
    ("model.name=~/no-such-model-folder", r"model\.name: no such folder"),
    ("model.name=runs/x/model", r"model\.name: no such folder 'runs/x/model'"),
    ("model.tokenizer=../no-such-tokenizer", r"model\.tokenizer: no such folder"),
])  # fmt: skip
def test_a_local_model_path_that_does_not_exist_fails_at_load(override: str, message: str) -> None:
    with pytest.raises(PipelineConfigError, match=message):
        load_pipeline_config("default", [override])


def test_a_model_folder_must_be_a_hugging_face_folder_and_hub_ids_pass(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineConfigError, match=r"model\.name: the folder .* has no config\.json"):
        load_pipeline_config("default", [f"model.name={tmp_path / 'empty'}"])
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(PipelineConfigError, match=r"model\.name: .*weights\.bin' is a file"):
        load_pipeline_config("default", [f"model.name={tmp_path / 'weights.bin'}"])
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert load_pipeline_config("default", [f"model.name={tmp_path / 'empty'}"]).model.name == str(tmp_path / "empty")
    assert load_pipeline_config("default", ["model.name=some-org/some-model"]).model.name == "some-org/some-model"
    assert load_pipeline_config("default", ["model.name=gpt2"]).model.name == "gpt2"  # a bare hub id


@pytest.mark.parametrize(("override", "message"), [
    ("teacher.policy=noisy:2", r"teacher\.policy: 'noisy:2': 'noisy:P' needs a probability P in \[0, 1\]"),
    ("teacher.policy=noisy:lots", r"teacher\.policy: 'noisy:lots'"),
    ("teacher.policy=expert:0.3", r"teacher\.policy: 'expert:0.3': 'expert' takes no argument"),
    ("teacher.policy=gpt4", r"teacher\.policy: 'gpt4': use openai:MODEL"),
    ("teacher.policy='openai:'", r"teacher\.policy: 'openai:': 'openai' needs a model"),
    ("teacher.policy=hf:./no-such-model", r"teacher\.policy: no such folder './no-such-model'"),
    ("teacher.policy_options={temprature: 0.5}", r"teacher\.policy_options: unknown option\(s\) 'temprature'"),
    ("eval.policy_options={batchsize: 4}", r"eval\.policy_options: unknown option\(s\) 'batchsize' for a hf"),
])  # fmt: skip
def test_the_teacher_policy_and_policy_options_are_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(PipelineConfigError, match=message):
        _load(override)


def test_valid_policies_and_options_pass() -> None:
    cfg = _load("teacher.policy=openai:gpt-4o", "teacher.policy_options={base_url: 'http://127.0.0.1:1/v1', "
                "temperature: 0.5}", "eval.policy_options={batch_size: 4}")  # fmt: skip
    assert str(cfg.teacher.policy) == "openai:gpt-4o" and cfg.teacher.policy.model == "gpt-4o" and cfg.eval.policy_options == {"batch_size": 4}
    assert _load("teacher.policy=noisy:0.3").teacher.policy.p == 0.3


@pytest.mark.parametrize(("override", "message"), [
    ("teacher.envs=[dbx]", r"teacher\.envs: unknown environment 'dbx'"),
    ("teacher.envs=[]", r"teacher\.envs: give at least one environment"),
    ("eval.envs=[held-in, nope]", r"eval\.envs: unknown environment 'nope'"),
    ("general.source=./no-such-chat.jsonl", r"general\.source: no such file or folder"),
    ("sweep.eta=[0.2, 1.5]", r"sweep\.eta\.1: Input should be less than or equal to 1"),
    ("sweep.eta=[]", r"sweep\.eta: List should have at least 1 item"),
    ("mix.eta=-0.1", r"mix\.eta: Input should be greater than or equal to 0"),
    ("teacher.n=0", r"teacher\.n: Input should be greater than or equal to 1"),
    ("train.max_steps=0", r"train.max_steps: Input should be greater than or equal to 1"),
    ("train.batch_size=-4", r"train.batch_size: Input should be greater than or equal to 1"),
    ("model.overrides={hiden_size: 64}", r"model\.overrides: unknown LlamaConfig field\(s\) 'hiden_size'"),
    ("model.name=scratch:huge", r"model\.name: unknown scratch preset 'huge'"),
])  # fmt: skip
def test_environments_sources_presets_and_ranges_are_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(PipelineConfigError, match=message):
        _load(override)


def test_the_cli_prints_a_config_mistake_as_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("model:\n  name: ./models/missing\n")
    r = runner.invoke(app, ["pipeline", str(cfg)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "p.yaml: model.name: no such folder './models/missing'" in said
    assert "Traceback" not in said


def test_the_train_command_checks_model_and_data_paths_before_loading_anything(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "model=./no-such-model", f"agent_data={tmp_path}", "eta=1", "max_steps=1"])
    assert r.exit_code == 2 and "model: no such folder './no-such-model'" in " ".join(r.output.split())
    r = runner.invoke(app, ["train", "model=gpt2", f"agent_data={tmp_path / 'nope.parquet'}", "eta=1", "max_steps=1"])
    assert r.exit_code == 2 and "agent_data: no such file or folder" in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_prepare_with_every_agent_example_too_long_fails_and_records_no_manifest(tmp_path: Path) -> None:
    """The pipeline used to record prepare done with 0 rows, and mix then failed on a 'missing column'."""
    from agenttuning.data.example import Example
    from agenttuning.data.formats import to_agentinstruct_record, write_examples
    from agenttuning.data.outputs import EmptyOutputError
    from agenttuning.jsonl import write_atomic
    from agenttuning.pipeline.cache import StageDir
    from agenttuning.pipeline.run import PlannedStage, _run_stage
    from agenttuning.pipeline.stages import STAGES, StageRecord
    from agenttuning.schema import Turn

    cfg = _load(f"out={tmp_path / 'run'}", "prepare.max_len=48", "prepare.length_policy=drop")
    long = [Example(id=f"db-{i}", source="agent", family="db", turns=[
        Turn(role="user", content="Thought and action, at length. " * 20),
        Turn(role="assistant", content="Thought: long. " * 20, loss=True)]) for i in range(3)]  # fmt: skip
    short = [Example(id=f"g{i}", source="general", family="chat", turns=[
        Turn(role="user", content="hi"), Turn(role="assistant", content="ok", loss=True)]) for i in range(3)]  # fmt: skip
    (tmp_path / "decontaminate").mkdir()
    write_atomic(tmp_path / "decontaminate" / "db.jsonl", [to_agentinstruct_record(e) for e in long])
    write_examples(short, tmp_path / "general" / "train.jsonl")
    records = {
        "decontaminate": StageRecord("decontaminate", "d", tmp_path / "decontaminate", {"files": {"db": "db.jsonl"}}),
        "general": StageRecord("general", "g", tmp_path / "general", {"train": "train.jsonl"}),
        "model": StageRecord("model", "m", tmp_path, {"model": "m", "tokenizer": "llama3", "local": False}),
    }
    stage = next(s for s in STAGES if s.name == "prepare")
    planned = PlannedStage(stage, "k" * 64, {"decontaminate": "d", "general": "g", "model": "m"})
    with pytest.raises(EmptyOutputError, match=r"prepare \(agent data\): prepare .*decontaminate: no rows to write: 3 examples read, 3 "
                       r"longer than max_len=48 \(policy drop\).*prepare\.max_len"):  # fmt: skip
        _run_stage(planned, cfg, records, Console(file=open("/dev/null", "w")), False)  # noqa: SIM115
    sd = StageDir.at(cfg.out, "prepare", "k" * 64)
    assert not sd.complete() and not sd.manifest_path.exists()
    assert not (sd.path / "agent" / "train.parquet").exists()

    # with room for the examples the same stage is recorded done, and mix reads both sources' rows
    cfg = _load(f"out={tmp_path / 'run'}", "prepare.max_len=1024", "prepare.length_policy=drop")
    rec = _run_stage(planned, cfg, records, Console(file=open("/dev/null", "w")), False)  # noqa: SIM115
    assert rec.status == "ran" and sorted(p.name for p in rec.dir.iterdir()) == ["agent", "general", "manifest.json"]
    mix = next(s for s in STAGES if s.name == "mix")
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    done = _run_stage(PlannedStage(mix, "m" * 64, {"prepare": "k", "model": "m"}), cfg,
                      {"prepare": rec, "model": records["model"]}, quiet, False)
    assert json.loads((done.dir / "metrics.json").read_text())["n_agent"] == 3


def test_a_pipeline_filter_that_keeps_nothing_fails_with_the_drop_counts(tmp_path: Path) -> None:
    from agenttuning.data.outputs import EmptyOutputError
    from agenttuning.jsonl import AppendWriter
    from agenttuning.pipeline.cache import StageDir
    from agenttuning.pipeline.run import PlannedStage, _run_stage
    from agenttuning.pipeline.stages import STAGES, StageRecord
    from tests.data.builders import make_traj

    with AppendWriter(tmp_path / "db-v1.jsonl") as w:
        for i in range(3):
            w.write(make_traj(f"db-train-{i:05d}", reward=0.0))
    cfg = _load(f"out={tmp_path / 'run'}")
    stage = next(s for s in STAGES if s.name == "filter")
    rollout = StageRecord("rollout", "r", tmp_path, {"files": ["db-v1.jsonl"]})
    with pytest.raises(EmptyOutputError, match=r"filter: no trajectory kept of 3 read from .*\(dropped: low_reward 3\)"):
        _run_stage(PlannedStage(stage, "f" * 64, {"rollout": "r"}), cfg, {"rollout": rollout},
                   Console(file=open("/dev/null", "w")), False)  # noqa: SIM115
    assert not StageDir.at(cfg.out, "filter", "f" * 64).complete()
