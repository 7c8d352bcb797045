"""The pipeline's ``tasks.self_instruct`` section (issue 14, item 2) and the construction table (item 3).

A real loopback OpenAI-compatible server plays the teacher: it writes two good db tasks and one that does not verify.
The pipeline runs instruct -> tasks -> rollout -> filter -> construction for real (the db environment, the noisy
expert as trajectory teacher); the verified tasks join db's train tasks, and the construction table counts each
source apart. Config mistakes are named at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agenttuning.data.construction import construction_table
from agenttuning.jsonl import read_records
from agenttuning.pipeline import load_pipeline_config, run_pipeline
from agenttuning.pipeline.config import PipelineConfigError
from agenttuning.report.inputs import load_construction
from agenttuning.schema import Step, Task, Trajectory
from tests.openai_server import FakeOpenAIServer

GOOD = [
    {"kind": "select", "instruction": "Which country has Canberra as its capital? Give its name.",
     "sql": "SELECT name FROM countries WHERE capital = 'Canberra'"},
    {"kind": "insert", "instruction": "Add the language Testish with the code zzx to the languages table.",
     "sql": "INSERT INTO languages (code, name) VALUES ('zzx', 'Testish')"},
]  # fmt: skip
BAD = {"kind": "select", "instruction": "What is the capital of Atlantis?",
       "sql": "SELECT capital FROM countries WHERE name = 'Atlantis'"}  # no rows: does not verify


def _config(out: Path, base_url: str, *extra: str):
    run = f"tasks.self_instruct=[{{env: db, teacher: 'openai:teacher', base_url: '{base_url}', n: 3, per_request: 3}}]"
    return load_pipeline_config("scratch", [f"out={out}", "teacher.n=6", run, *extra])


def test_verified_tasks_join_the_rollout_and_the_construction_table_counts_each_source(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda messages: json.dumps([*GOOD, BAD])) as srv:
        cfg = _config(tmp_path, srv.base_url)
        run = run_pipeline(cfg, console=Console(file=open("/dev/null", "w")), progress=False,  # noqa: SIM115
                           until="construction")  # fmt: skip
        assert srv.request_count == 1
    assert run.ran() == ["instruct", "tasks", "rollout", "filter", "construction"]
    assert run.report is None  # stopped before the report
    instruct = run.records["instruct"].result["runs"]
    assert [(r["env"], r["asked"], r["drafts"], r["kept"], r["rejected"]) for r in instruct] == [
        ("db-v1", 3, 3, 2, {"empty_result": 1})]
    tasks_rec = run.records["tasks"]
    info = tasks_rec.result["envs"]["db-v1"]
    assert (info["n"], info["derived"], info["self_instruct"]) == (8, 6, 2)
    tasks = list(read_records(tasks_rec.dir / info["file"], Task))
    instructed = [t for t in tasks if t.id.startswith("db-instruct-")]
    assert sorted(t.instruction for t in instructed) == sorted(g["instruction"] for g in GOOD)
    # the teacher played every task, the self-instructed ones included
    rollout = run.records["rollout"].result["envs"]["db-v1"]
    assert rollout["n"] == 8
    table = load_construction(run.records["construction"].dir / "construction.json")
    rows = {(r.env, r.source): r for r in table.rows}
    derived, si, total = rows["db-v1", "derived"], rows["db-v1", "self-instruct"], rows["all", "all"]
    assert (derived.instructions, derived.verified, derived.trajectories) == (6, 6, 6)
    assert (si.instructions, si.verified, si.trajectories) == (3, 2, 2)
    assert total.trajectories == 8 and total.kept == derived.kept + si.kept == run.records["filter"].result["n_kept"]
    assert total.keep_ratio == pytest.approx(total.kept / 8, abs=1e-4)
    # a second run finds every stage done, and asks the teacher nothing
    with FakeOpenAIServer(lambda messages: "[]") as srv2:
        again = run_pipeline(_config(tmp_path, srv.base_url), console=Console(file=open("/dev/null", "w")),  # noqa: SIM115
                             progress=False, until="construction")  # fmt: skip
        assert again.ran() == [] and srv2.request_count == 0


def test_self_instruct_config_mistakes_are_named_at_load(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(PipelineConfigError, match=r"tasks.self_instruct\[0\].env: 'kg' has no self-instruct module"):
        load_pipeline_config("scratch", ["teacher.envs=[db, kg]",
                                         f"tasks.self_instruct=[{{env: kg, teacher: 'openai:m', base_url: '{url}'}}]"])
    with pytest.raises(PipelineConfigError, match="is not in teacher.envs"):
        load_pipeline_config("scratch", ["teacher.envs=[kg]",
                                         f"tasks.self_instruct=[{{env: db, teacher: 'openai:m', base_url: '{url}'}}]"])
    with pytest.raises(PipelineConfigError, match="must be 'openai:MODEL'"):
        load_pipeline_config("scratch", ["tasks.self_instruct=[{env: db, teacher: 'expert'}]"])
    with pytest.raises(PipelineConfigError, match=r"tasks.self_instruct.0.nn: Extra inputs are not permitted"):
        load_pipeline_config("scratch", ["tasks.self_instruct=[{env: db, teacher: 'openai:m', nn: 3}]"])
    with pytest.raises(ValueError, match="not a stage of this run"):
        run_pipeline(load_pipeline_config("scratch", [f"out={tmp_path}"]), until="instruct")


def _traj(task: Task, steps: int, reward: float) -> Trajectory:
    step = Step(thought="t", action="a", raw="Thought: t\nAction: a", observation="o", reward=reward)
    return Trajectory(task=task, steps=[step] * steps, reward=reward, success=reward >= 1)


def test_the_construction_table_definitions() -> None:
    derived = [Task(id=f"d{i}", env="db-v1", split="train", instruction=f"q{i}") for i in range(4)]
    mine = [Task(id=f"s{i}", env="db-v1", split="train", instruction=f"s{i}") for i in range(2)]
    other = [Task(id="o0", env="os-v1", split="train", instruction="o")]
    trajs = [_traj(derived[0], 2, 1.0), _traj(derived[1], 4, 1.0), _traj(derived[2], 3, 0.0), _traj(derived[3], 1, 0.0),
             _traj(mine[0], 5, 1.0), _traj(mine[1], 2, 0.0), _traj(other[0], 7, 1.0)]  # fmt: skip
    kept = [t for t in trajs if t.reward >= 1]
    table = construction_table(derived + mine + other, trajs, kept, {"db-v1": (10, 2)}, {"s0", "s1"})
    got = [(r.env, r.source, r.instructions, r.verified, r.trajectories, r.kept, r.mean_turns, r.keep_ratio)
           for r in table.rows]  # fmt: skip
    assert got == [
        ("db-v1", "derived", 4, 4, 4, 2, 3.0, 0.5),
        ("db-v1", "self-instruct", 10, 2, 2, 1, 5.0, 0.5),
        ("os-v1", "derived", 1, 1, 1, 1, 7.0, 1.0),
        ("all", "all", 15, 7, 7, 4, 4.5, round(4 / 7, 4)),  # (2 + 4 + 5 + 7) / 4 turns
    ]
    # a self-instruct run that kept nothing still shows what was asked
    empty = construction_table(derived, trajs[:4], kept[:2], {"db-v1": (20, 0)}, set())
    assert [(r.source, r.instructions, r.verified, r.trajectories) for r in empty.rows][1] == ("self-instruct", 20, 0, 0)
