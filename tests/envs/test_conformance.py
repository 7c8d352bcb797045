"""The conformance checker runs on every registered environment, and catches the faults it is there for."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from agenttuning.envs import base
from agenttuning.envs.base import StepResult, available, get
from agenttuning.rollout.conformance import check_env
from agenttuning.schema import Turn
from tests.toy_env import LookupDefinition, LookupEnv


@pytest.mark.parametrize("definition", available(), ids=lambda d: d.id)
def test_every_registered_environment_conforms(definition):
    if definition.unavailable_reason() is not None:  # e.g. os without bubblewrap: said, not counted as passing
        pytest.skip(f"{definition.id} cannot run here: {definition.unavailable_reason()}")
    report = check_env(definition, max_tasks=definition.test_sample)
    assert report.passed, [(r.name, r.detail) for r in report.failures()]
    assert [r.name for r in report.results] == [
        "identity",
        "tasks deterministic, splits disjoint",
        "context well-formed",
        "task payloads fit the payload model",
        "reset deterministic, invalid actions are feedback",
        "expert solves every test task",
        "wrong answer scores 0",
        "adversarial actions: bounded time, size and memory",
        "no state leaks between episodes",
        "episode lifecycle: early and late steps, resets, interrupt, close",
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


def test_checker_catches_task_payloads_that_do_not_fit_the_payload_model():
    broken = {"lookup-train-0003": {"key": 7}, "lookup-test-0001": {"slow_s": "soon"}}  # a number key; not a float
    report = check_env(LookupDefinition(extra=broken))
    failed = {r.name: r.detail for r in report.failures()}
    detail = failed["task payloads fit the payload model"]
    assert "2 task payloads do not fit LookupPayload" in detail
    assert "task lookup-train-0003 (lookup-v1)" in detail and "key: Input should be a valid string" in detail
    assert "task lookup-test-0001 (lookup-v1)" in detail and "slow_s" in detail
    passed = {r.name: r.detail for r in check_env(LookupDefinition(n_test=3)).results}
    assert passed["task payloads fit the payload model"] == "43 tasks fit LookupPayload"


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
    # the built-in families come through the same entry points (pyproject.toml), not by name
    builtin = list(base.entry_points(group=base.ENTRY_POINT_GROUP))
    assert sorted(e.name for e in builtin) == ["agentbench_db", "agentbench_os", "alfworld", "db", "household", "kg", "miniwob",
                                                  "os", "sciworld"], "reinstall: pip install --no-deps -e ."
    ep = EntryPoint(name="lookup", value="tests.toy_env:LookupDefinition", group=base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "entry_points", lambda group: [*builtin, ep] if group == base.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    monkeypatch.setattr(base, "_REGISTRY", {})
    assert [d.id for d in available()] == ["agentbench_db-v1", "agentbench_os-v1", "alfworld-v1", "db-v1", "household-v1",
                                         "kg-v1", "lookup-v1", "miniwob-v1", "os-v1", "sciworld-v1"]
    assert get("lookup-v1").name == "lookup"
    with pytest.raises(KeyError, match="registered version is lookup-v1"):
        get("lookup-v2")
    with pytest.raises(KeyError, match="unknown environment"):
        get("nope")


# --- the adversarial suite catches what an agent's actions may never do --------------------------------------

def _adversarial_failures(env_class, **kw):
    class Def(LookupDefinition):
        def make(self):
            return env_class(self)

    report = check_env(Def(n_test=2), call_limit_s=kw.pop("call_limit_s", 0.5), **kw)
    return {r.name: r.detail for r in report.failures()}


def test_adversarial_suite_catches_an_unbounded_observation():
    class Echo(LookupEnv):
        def step(self, action):
            return StepResult(f"You said {action}", invalid=True)

    detail = _adversarial_failures(Echo)["adversarial actions: bounded time, size and memory"]
    assert "observation" in detail


def test_adversarial_suite_catches_a_step_that_overruns_and_one_that_raises():
    import threading

    class Slow(LookupEnv):
        def __init__(self, d):
            super().__init__(d)
            self.stop = threading.Event()

        def step(self, action):
            if len(action) > 100_000:
                self.stop.wait(3)  # a long call that only interrupt() ends early
            return super().step(action)

        def interrupt(self):
            self.stop.set()

    detail = _adversarial_failures(Slow)["adversarial actions: bounded time, size and memory"]
    assert "did not return within 0.5 s (it returned only after interrupt())" in detail

    class Raises(LookupEnv):
        def step(self, action):
            action.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
            return super().step(action)

    detail = _adversarial_failures(Raises)["adversarial actions: bounded time, size and memory"]
    assert "UnicodeEncodeError" in detail


def test_adversarial_suite_catches_state_leaking_into_the_next_episode():
    class Leaky(LookupEnv):
        poisoned = False  # shared by every instance: what one episode does is seen by the next

        def reset(self, task):
            return super().reset(task) + (" (poisoned)" if Leaky.poisoned else "")

        def step(self, action):
            if "\ud800" in action:  # only the adversarial actions have one
                Leaky.poisoned = True
            return super().step(action)

    assert "no state leaks between episodes" in _adversarial_failures(Leaky)


def test_adversarial_suite_catches_unbounded_memory():
    kept = []

    class Hog(LookupEnv):
        def step(self, action):
            if len(action) > 100_000:
                kept.append(b"x" * (48 << 20))  # retained across steps, like a cache that never evicts
            return super().step(action)

    try:
        detail = _adversarial_failures(Hog, max_rss_growth=32 << 20)["adversarial actions: bounded time, size and memory"]
        assert "memory grew by" in detail
    finally:
        kept.clear()


def test_the_environment_base_imports_no_environment():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(base))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.startswith("agenttuning.envs")], imported


def test_the_base_owns_reset_before_step_the_budget_and_the_results():
    d = LookupDefinition()
    d.env_budget = 2
    env = d.make()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("lookup a")
    task = d.tasks("test")[0]
    with pytest.raises(ValueError, match="belongs to"):
        env.reset(task.model_copy(update={"env": "other-v1"}))
    env.reset(task)
    bad = env.step("  dance  ")
    assert bad.invalid and bad.reward == 0 and not bad.terminated and "'dance'" in bad.info["reason"]
    last = env.step("lookup a")  # the second turn spends the budget: truncated, failed
    assert last.truncated and not last.terminated and last.success is False and env.turns == 2
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("lookup b")
    env.reset(task)
    won = env.step(d.expert(task, [Turn(role="assistant", content="looked it up")]).split("Action: ")[-1])
    assert won.terminated and won.success is True and won.reward == 1.0 and env.turns == 1
    env.close()
    env.close()
