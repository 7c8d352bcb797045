"""Typed payloads: the base validates a task's payload into the family's model once, at reset, and a payload that
does not fit is an error naming the task; on the wire a payload stays a plain JSON object."""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import BaseModel

from agenttuning.envs import base
from agenttuning.envs.base import EpisodeEnv, PayloadError, StepResult
from agenttuning.envs.db import definition as db_definition
from agenttuning.envs.db.payload import DbPayload
from agenttuning.envs.kg import definition as kg_definition
from agenttuning.envs.kg.payload import KgPayload, PlanStep
from agenttuning.schema import Task
from tests.toy_env import LookupDefinition, LookupEnv, LookupPayload

DB, KG = db_definition(), kg_definition()


def test_a_good_task_gets_its_payload_typed_at_reset():
    seen = []

    class Recording(LookupEnv):
        def start(self, task, payload):
            seen.append(payload)
            return super().start(task, payload)

    d = LookupDefinition(extra={"lookup-test-0000": {"slow_s": 0.001}})
    task = d.tasks("test")[0]
    env = Recording(d)
    env.reset(task)
    assert Recording.payload_model is LookupPayload  # inherited from LookupEnv(EpisodeEnv[LookupPayload])
    assert seen == [env.payload] and isinstance(env.payload, LookupPayload)
    assert env.payload.key == "test0" and env.payload.slow_s == 0.001 and env.payload.fail is False
    assert isinstance(task.payload, dict)  # the task record itself is untouched


@pytest.mark.parametrize(("definition", "model"), [(DB, DbPayload), (KG, KgPayload)], ids=["db", "kg"])
def test_built_in_families_read_typed_payloads(definition, model):
    task = definition.tasks("test")[0]
    with definition.make() as env:
        env.reset(task)
        assert type(env).payload_model is model and isinstance(env.payload, model)
        assert env.payload.model_dump(exclude_unset=True) == task.payload  # nothing lost, nothing added
    assert definition.payload(task) == env.payload  # the same model outside an episode (the expert reads it)


def test_every_built_in_task_validates_and_stays_a_json_object_on_the_wire():
    for definition in (DB, KG):
        for split in ("train", "test"):
            for task in definition.tasks(split):
                definition.payload(task)
                record = json.loads(task.model_dump_json())
                assert isinstance(record["payload"], dict) and Task.model_validate(record) == task


def test_a_bad_payload_is_an_error_naming_the_task():
    d = LookupDefinition()
    good, bad = d.tasks("test")[:2]
    bad = bad.model_copy(update={"payload": {"kee": "test1"}})  # a typo: no key
    env = d.make()
    env.reset(good)
    with pytest.raises(PayloadError, match=r"task lookup-test-0001 \(lookup-v1\): its payload does not fit "
                                           r"LookupPayload: key: Field required"):
        env.reset(bad)
    assert env.task is good and not env.step("lookup a").terminated  # refused before anything changed
    with pytest.raises(PayloadError, match="task lookup-test-0001"):
        d.payload(bad)


def test_the_built_in_models_check_the_gold_fits_the_kind_of_task():
    select = DB.tasks("test")[0]
    assert select.payload["kind"] == "select"
    cases = [
        (select, {"answer": []}, "a select task needs its gold rows"),
        (select, {"kind": "delete"}, r"a change \(delete\) needs 'table' and 'table_hash'"),
        (select, {"colour": "red"}, "colour: Extra inputs are not permitted"),
        (select, {"kind": "drop"}, "kind: Input should be 'select', 'insert', 'update' or 'delete'"),
    ]
    count = next(t for t in KG.tasks("test") if t.payload["kind"] == "count")
    cases += [
        (count, {"answer": ["Peru"]}, "a count question's answer must be a number"),
        (count, {"entities": []}, "names at least one entity"),
        (count, {"plan": [{"action": "count(#0)"}]}, "plan.0.thought: Field required"),
    ]
    for task, change, message in cases:
        broken = task.model_copy(update={"payload": {**task.payload, **change}})
        definition = DB if task.env == DB.id else KG
        with pytest.raises(PayloadError, match=f"task {task.id} .*{message}"):
            definition.make().reset(broken)


def test_the_payload_model_comes_from_the_generic_parameter_or_the_class_attribute():
    class Note(BaseModel):
        text: str

    class Generic(EpisodeEnv[Note]):
        def start(self, task, payload):
            return payload.text

        def act(self, action):
            return StepResult(action)

    class Explicit(Generic):
        payload_model = PlanStep

    assert Generic.payload_model is Note and Explicit.payload_model is PlanStep

    class Untyped(EpisodeEnv):
        def start(self, task, payload):
            return ""

        def act(self, action):
            return StepResult(action)

    with pytest.raises(TypeError, match=r"Untyped declares no payload model: subclass EpisodeEnv\[YourPayload\]"):
        Untyped(LookupDefinition())


def test_payload_is_only_there_during_an_episode():
    env = LookupDefinition().make()
    with pytest.raises(RuntimeError, match="call reset"):
        env.payload  # noqa: B018 - the property raises


# --- what else the definition base owns: the task cache and the factory ----------------------------------------

def test_tasks_are_derived_once_even_when_first_asked_from_many_threads():
    class Counting(LookupDefinition):
        calls = 0

        def derive_tasks(self):
            Counting.calls += 1
            threading.Event().wait(0.05)  # a slow derivation, so the threads overlap
            return super().derive_tasks()

    d = Counting(n_train=3, n_test=2)
    got: list[list[Task]] = []
    threads = [threading.Thread(target=lambda: got.append(d.tasks("test"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counting.calls == 1 and all(g == got[0] for g in got) and len(got[0]) == 2
    d.tasks("test").clear()  # every call hands out a fresh list
    assert len(d.tasks("test")) == 2 and len(d.tasks("train")) == 3
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        d.tasks("dev")  # type: ignore[arg-type]


def test_make_builds_the_env_class_and_says_when_there_is_none():
    assert type(LookupDefinition().make()) is LookupEnv

    class NoEnv(LookupDefinition):
        env_class = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="NoEnv sets no env_class"):
        NoEnv().make()
    assert isinstance(base.get("db").make(), type(DB).env_class)
