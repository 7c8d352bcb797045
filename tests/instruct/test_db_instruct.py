"""Self-instruct for ``db`` (issue 14, item 2) against a real loopback OpenAI-compatible server playing the teacher.

The teacher double returns a fixed mix: good tasks, a broken reply, a broken item, an over-long item, SQL that
fails, SQL with no answer, a change that changes nothing, a task whose reference solution fails in the
environment, a copy of a train task, a copy of a test task, a duplicate within the batch, and more items than asked
for. Everything runs for real: the HTTP server, the OpenAI client, the SQLite environment with its guards.
"""

from __future__ import annotations

import json
from itertools import count

import pytest

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.envs.db import definition
from agenttuning.envs.db.instruct import MAX_REPLY_CHARS, DbDraft, Rejected, draft_task, read_drafts
from agenttuning.jsonl import read_records
from agenttuning.schema import Task
from agenttuning.stages.instruct import InstructConfig, run
from agenttuning.stages.manifest import read_stage_manifest
from tests.openai_server import FakeOpenAIServer

GOOD_SELECT = {"kind": "select", "instruction": "Which country has Canberra as its capital? Give its name.",
               "sql": "SELECT name FROM countries WHERE capital = 'Canberra'", "need": "the country whose capital is Canberra"}
GOOD_UPDATE = {"kind": "update", "instruction": "Rename the currency with code EUR to 'Euro (EUR)'.",
               "sql": "UPDATE currencies SET name = 'Euro (EUR)' WHERE code = 'EUR';"}
GOOD_INSERT = {"kind": "insert", "instruction": "Add the language Testish with the code zzx to the languages table.",
               "sql": "INSERT INTO languages (code, name) VALUES ('zzx', 'Testish')"}


def _as_draft(task: Task) -> dict:
    return {"kind": task.payload["kind"], "instruction": task.instruction, "sql": task.payload["sql"]}


def _replies() -> list[str]:
    d = definition()
    first = [
        GOOD_SELECT,
        GOOD_UPDATE,
        {"kind": "select", "instruction": "Where is the sql?"},  # unparsable: no sql
        {"kind": "select", "instruction": "A long one.", "sql": "SELECT 1" + " " * 2500},  # too_long
        {"kind": "select", "instruction": "What is in the planets table?", "sql": "SELECT * FROM planets"},
        {"kind": "select", "instruction": "What is the capital of Atlantis?",
         "sql": "SELECT capital FROM countries WHERE name = 'Atlantis'"},  # empty_result
        {"kind": "delete", "instruction": "Delete every city with a negative population.",
         "sql": "DELETE FROM cities WHERE population < 0"},  # no_change
        {"kind": "update", "instruction": "Rename the euro to Euro followed by three backticks.",
         "sql": "UPDATE currencies SET name = 'Euro```' WHERE code = 'EUR'"},  # expert_fails: breaks the sql fence
        _as_draft(d.tasks("train")[0]),  # duplicate of the environment's own task
        _as_draft(d.tasks("test")[0]),  # test_contaminated
        dict(GOOD_SELECT),  # duplicate within the batch
    ]
    third = [GOOD_INSERT, GOOD_SELECT, GOOD_UPDATE]  # 3 items where 2 were asked for: the third is excess
    return [json.dumps(first), "Sure! Here are your tasks: [{oops", "```json\n" + json.dumps(third) + "\n```"]


@pytest.fixture(scope="module")
def test_index() -> ContaminationIndex:
    return ContaminationIndex.build(definition().tasks("test"))


def test_exactly_the_good_tasks_are_kept_and_each_rejection_is_counted(tmp_path, test_index):
    replies, n = _replies(), count()
    with FakeOpenAIServer(lambda messages: replies[next(n)]) as srv:
        config = InstructConfig(teacher="openai:teacher", base_url=srv.base_url, n=24, per_request=11,
                                concurrency=1, max_retries=0)
        out = run(config, tmp_path / "instruct", index=test_index)
        prompt = srv.requests[0].body["messages"][-1]["content"]
        seeds = [r.body["seed"] for r in srv.requests]

    d = definition()
    want = [draft_task(d, DbDraft.model_validate(x)) for x in (GOOD_SELECT, GOOD_UPDATE, GOOD_INSERT)]
    kept = read_records(tmp_path / "instruct" / "tasks.jsonl", Task)
    assert [t.id for t in kept] == [t.id for t in want]
    assert kept == want
    assert all(t.id.startswith("db-instruct-") and t.env == "db-v1" and t.split == "train" for t in kept)
    assert out.rejected == {"excess": 1, "unparsable": 1, "too_long": 1, "sql_error": 1, "empty_result": 1,
                            "no_change": 1, "expert_fails": 1, "test_contaminated": 1, "duplicate": 3}
    assert out.rejected_replies == {"unparsable_reply": 1}
    assert (out.requests, out.asked, out.drafts, out.kept) == (3, 24, 14, 3)
    assert out.drafts == out.kept + sum(out.rejected.values())

    stats = json.loads((tmp_path / "instruct" / "stats.json").read_text())
    assert stats["rejected"] == out.rejected and stats["keep_ratio"] == round(3 / 14, 4)
    lines = [json.loads(x) for x in (tmp_path / "instruct" / "rejections.jsonl").read_text().splitlines()]
    assert sum(r["reason"] == "duplicate" for r in lines) == 3 and len(lines) == 12
    manifest = read_stage_manifest(tmp_path / "instruct")
    assert manifest is not None and manifest.stage == "instruct" and manifest.result["kept"] == 3
    # the teacher saw the description, the schema, the format and seed tasks
    assert d.description in prompt and "country_languages(" in prompt and '"sql"' in prompt
    assert sum(t.instruction in prompt for t in d.tasks("train")) == config.seeds
    assert seeds == [0, 1, 2]  # each request samples with its own seed (config.seed + its index)


def test_kept_tasks_grade_in_the_real_environment_and_ids_are_content_addressed():
    d = definition()
    task = draft_task(d, DbDraft.model_validate(GOOD_SELECT))
    assert isinstance(task, Task) and task.payload["answer"] == [["Australia"]]
    assert draft_task(d, DbDraft.model_validate(GOOD_SELECT)).id == task.id  # same draft, same id
    env = d.make()
    try:
        env.reset(task)
        assert env.step("Answer\nFinal Answer: ['Australia']").reward == 1.0
        env.reset(task)
        assert env.step("Answer\nFinal Answer: ['Austria']").reward == 0.0
    finally:
        env.close()


def test_adversarial_replies_are_bounded_and_never_crash():
    assert read_drafts("[" * 60_000, 5)[1].reason == "unparsable_reply"  # nesting: no RecursionError escapes
    assert read_drafts("x" * (MAX_REPLY_CHARS + 1), 5)[1].reason == "reply_too_long"
    assert read_drafts('{"kind": "select"}', 5)[1].reason == "unparsable_reply"  # an object, not an array
    items, whole = read_drafts(json.dumps({"tasks": [dict(GOOD_SELECT, ordered="yes"), dict(GOOD_SELECT, x=1)]}), 5)
    assert whole is None and [i.reason for i in items] == ["unparsable", "unparsable"]  # strict types, no extras
    d = definition()
    for sql, reason in [
        ("SELECT 1; DROP TABLE countries", "sql_error"),
        ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r", "sql_error"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "kind_mismatch"),
        ("SELECT name FROM countries WHERE continent_code = 'EU' LIMIT 1", "ambiguous_result"),
        ("SELECT name FROM countries", "too_many_rows"),
        ("SELECT 42", "no_table"),
    ]:
        made = draft_task(d, DbDraft(kind="select", instruction="q", sql=sql))
        assert isinstance(made, Rejected) and made.reason == reason, (sql, made)
    made = draft_task(d, DbDraft(kind="update", instruction="c", sql="SELECT name FROM countries"))
    assert isinstance(made, Rejected) and made.reason == "kind_mismatch"


def test_a_failing_teacher_is_counted_not_fatal(tmp_path, test_index):
    with FakeOpenAIServer(lambda messages: "[]") as srv:
        srv.inject("500", times=None)
        config = InstructConfig(teacher="openai:teacher", base_url=srv.base_url, n=2, per_request=1, max_retries=0)
        out = run(config, tmp_path / "o", index=test_index)
    assert out.kept == 0 and out.rejected_replies == {"request_failed": 2}
    assert (tmp_path / "o" / "tasks.jsonl").read_text() == ""


def test_the_command_keeps_verified_tasks_that_rollout_then_runs(tmp_path):
    """`agenttuning instruct` end to end (the default test index: every registered test split), then the kept tasks
    through `agenttuning rollout --tasks` with the expert."""
    from typer.testing import CliRunner

    from agenttuning.cli import app

    reply = json.dumps([GOOD_SELECT, GOOD_UPDATE, {"kind": "select", "instruction": "x?", "sql": "SELECT * FROM nope"}])
    with FakeOpenAIServer(lambda messages: reply) as srv:
        r = CliRunner().invoke(app, ["instruct", "--teacher", "openai:teacher", "--base-url", srv.base_url,
                                     "--api-key", "k", "-n", "3", "--per-request", "3", "--out", str(tmp_path / "i")])
    assert r.exit_code == 0, r.output
    assert "3 / 3 / 2" in r.output and "sql_error" in r.output
    assert "api_key" not in (tmp_path / "i" / "manifest.json").read_text()  # the key is never written
    r = CliRunner().invoke(app, ["rollout", "--env", "db", "--tasks", str(tmp_path / "i" / "tasks.jsonl"),
                                 "--policy", "expert", "--out", str(tmp_path / "roll.jsonl"), "--no-progress"])
    assert r.exit_code == 0, r.output
    trajs = [json.loads(x) for x in (tmp_path / "roll.jsonl").read_text().splitlines()]
    assert len(trajs) == 2 and all(t["success"] for t in trajs)
