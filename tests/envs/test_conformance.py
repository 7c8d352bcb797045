"""The conformance checker runs on every registered environment, and catches the faults it is there for."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from agenttuning.envs import base
from agenttuning.envs.base import StepResult, available, get
from agenttuning.envs.check import check_env
from tests.toy_env import LookupDefinition, LookupEnv


@pytest.mark.parametrize("definition", available(), ids=lambda d: d.id)
def test_every_registered_environment_conforms(definition):
    report = check_env(definition)
    assert report.passed, [(r.name, r.detail) for r in report.failures()]
    assert [r.name for r in report.results] == [
        "identity",
        "tasks deterministic, splits disjoint",
        "context well-formed",
        "reset deterministic, invalid actions are feedback",
        "expert solves every test task",
        "wrong answer scores 0",
    ]


def test_toy_environment_conforms():
    assert check_env(LookupDefinition()).passed


def failing(report):
    return {r.name for r in report.failures()}


def test_checker_catches_an_expert_that_fails():
    class BadExpert(LookupDefinition):
        def expert(self, task, history):
            return "Thought: guess\nAction: answer nope"

    assert failing(check_env(BadExpert())) == {"expert solves every test task"}


def test_checker_catches_a_grader_that_rewards_wrong_answers():
    class Lenient(LookupEnv):
        def step(self, action):
            r = super().step(action)
            return StepResult(r.observation, reward=1.0, terminated=r.terminated, info={}) if r.terminated else r

    class LenientDef(LookupDefinition):
        def make(self):
            return Lenient(self)

    assert "wrong answer scores 0" in failing(check_env(LenientDef()))


def test_checker_catches_nondeterministic_tasks_and_shared_instructions():
    class Drifting(LookupDefinition):
        calls = 0

        def tasks(self, split):
            Drifting.calls += 1
            return super().tasks(split)[: 10 + Drifting.calls % 2]

    assert "tasks deterministic, splits disjoint" in failing(check_env(Drifting()))

    class Leaky(LookupDefinition):
        def tasks(self, split):
            ts = super().tasks(split)
            return [t.model_copy(update={"instruction": "Find the word for x."}) for t in ts[:1]] + ts[1:]

    assert "tasks deterministic, splits disjoint" in failing(check_env(Leaky()))


def test_checker_catches_an_exception_on_invalid_actions():
    class Strict(LookupEnv):
        def step(self, action):
            if not action.strip():
                raise ValueError("empty")
            return super().step(action)

    class StrictDef(LookupDefinition):
        def make(self):
            return Strict(self)

    assert "reset deterministic, invalid actions are feedback" in failing(check_env(StrictDef()))


def test_third_party_environments_load_from_entry_points(monkeypatch):
    ep = EntryPoint(name="lookup", value="tests.toy_env:LookupDefinition", group=base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "entry_points", lambda group: [ep] if group == base.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    monkeypatch.setattr(base, "_REGISTRY", {})
    assert [d.id for d in available()] == ["db-v1", "kg-v1", "lookup-v1"]
    assert get("lookup-v1").name == "lookup"
    with pytest.raises(KeyError, match="registered version is lookup-v1"):
        get("lookup-v2")
    with pytest.raises(KeyError, match="unknown environment"):
        get("nope")
