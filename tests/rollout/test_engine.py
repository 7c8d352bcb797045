"""The rollout engine on a real (toy) environment: ends of episodes, failures recorded, output file discipline."""

from __future__ import annotations

import asyncio
import json

import pytest

from agenttuning.data.formats import to_agentinstruct_record
from agenttuning.jsonl import read_records
from agenttuning.policies.base import PolicyError
from agenttuning.policies.baselines import ExpertPolicy, WrongPolicy
from agenttuning.rollout.engine import EpisodeLimits, rollout, run_episode
from agenttuning.envs.base import StepResult
from agenttuning.schema import Trajectory, conversation
from tests.toy_env import LookupDefinition, Scripted


def episode(env, policy, task=None, **limits):
    task = task or env.tasks("test")[0]
    return asyncio.run(run_episode(env, task, policy, limits=EpisodeLimits(**limits)))


def test_expert_episode_is_two_steps_and_succeeds():
    env = LookupDefinition()
    t = episode(env, ExpertPolicy(env))
    assert t.success and t.reward == 1.0 and t.end_reason == "done"
    assert [s.action.split()[0] for s in t.steps] == ["lookup", "answer"]
    assert t.steps[-1].terminated and not t.steps[-1].truncated
    assert t.initial_observation.startswith("Find the word for test0.")
    # the derived conversation: context (4 turns), task, reply, observation, reply
    conv = conversation(t)
    assert [c.loss for c in conv] == [None, False, None, False, None, True, None, True]


def test_wrong_answer_scores_zero():
    env = LookupDefinition()
    t = episode(env, WrongPolicy(env))
    assert (t.success, t.reward, t.end_reason) == (False, 0.0, "done")


def test_unparsable_reply_gets_invalid_action_feedback_and_uses_a_turn():
    env = LookupDefinition()
    t = episode(env, Scripted(["I refuse to follow the format."]), max_turns=3)
    assert t.end_reason == "max_turns" and not t.success
    assert len(t.steps) == 3
    assert all(s.parse_error and s.observation.startswith("Invalid action") for s in t.steps)
    assert t.steps[-1].truncated and not t.steps[-1].terminated


def test_repeated_action_three_times_ends_as_failure():
    env = LookupDefinition()
    t = episode(env, Scripted(["Thought: again\nAction: lookup x"]), max_turns=10)
    assert t.end_reason == "repeated_action" and len(t.steps) == 3 and not t.success


def test_the_same_action_with_changing_observations_is_not_a_loop():
    """Walking "go east" through three rooms moves; only the same action with the same result three times is stuck."""
    from tests.toy_env import LookupEnv

    class Walk(LookupEnv):
        def act(self, action: str) -> StepResult:
            return StepResult(f"You are in room {self.turns}.") if action == "go east" else super().act(action)

    class WalkDefinition(LookupDefinition):
        env_class = Walk

    t = episode(WalkDefinition(), Scripted(["Thought: on\nAction: go east"]), max_turns=5)
    assert t.end_reason == "max_turns" and len(t.steps) == 5


def test_env_truncation_is_not_termination():
    env = LookupDefinition()
    env.env_budget = 2
    t = episode(env, Scripted(["Action: lookup a", "Action: lookup b", "Action: lookup c"]))
    assert t.end_reason == "env_truncated" and t.steps[-1].truncated and not t.steps[-1].terminated


def test_context_budget_ends_episode():
    env = LookupDefinition()
    t = episode(env, ExpertPolicy(env), max_context_tokens=5)
    assert t.end_reason == "context_length" and t.steps == []


def test_policy_error_is_recorded_not_raised():
    env = LookupDefinition()
    t = episode(env, Scripted(["Action: lookup k", PolicyError("HTTP 500 after 6 attempts")]))
    assert t.end_reason == "policy_error" and "HTTP 500" in t.error and len(t.steps) == 1


def test_env_exception_is_recorded_not_raised():
    env = LookupDefinition(extra={"lookup-test-0000": {"raise": True}})
    t = episode(env, ExpertPolicy(env))
    assert t.end_reason == "env_error" and "the environment broke" in t.error


def test_timeout_keeps_the_steps_done_so_far():
    env = LookupDefinition(extra={"lookup-test-0000": {"slow_s": 0.3}})
    t = episode(env, Scripted(["Action: lookup a", "Action: lookup b", "Action: lookup c"]), timeout_s=0.5)
    assert t.end_reason == "timeout" and "0.5s" in t.error
    assert len(t.steps) == 1 and t.steps[0].truncated


def test_rollout_writes_every_task_once_and_summarises(tmp_path):
    env = LookupDefinition(n_test=30)
    out = tmp_path / "runs" / "x.jsonl"
    s = rollout(env, env.tasks("test"), ExpertPolicy(env), out, concurrency=8)
    trajs = read_records(out, Trajectory)
    assert sorted(t.task.id for t in trajs) == sorted(t.id for t in env.tasks("test"))
    assert (s.finished, s.successes, s.total, s.skipped) == (30, 30, 30, 0)
    assert s.end_reasons == {"done": 30} and s.steps == 60
    # every line is a complete JSON object that converts to AgentInstruct
    lines = out.read_text().splitlines()
    assert len(lines) == 30 and all(json.loads(x)["success"] for x in lines)
    assert to_agentinstruct_record(trajs[0])["conversations"][-1]["loss"] is True


def test_existing_output_needs_resume(tmp_path):
    env = LookupDefinition(n_test=4)
    out = tmp_path / "x.jsonl"
    rollout(env, env.tasks("test")[:2], ExpertPolicy(env), out)
    with pytest.raises(FileExistsError, match="resume"):
        rollout(env, env.tasks("test"), ExpertPolicy(env), out)
    s = rollout(env, env.tasks("test"), ExpertPolicy(env), out, resume=True)
    assert (s.skipped, s.finished) == (2, 2)
    assert len(read_records(out, Trajectory)) == 4


def test_failing_policy_never_crashes_the_run(tmp_path):
    env = LookupDefinition(n_test=10)
    out = tmp_path / "x.jsonl"
    s = rollout(env, env.tasks("test"), Scripted([PolicyError("gone")]), out, concurrency=4)
    assert s.finished == 10 and s.end_reasons == {"policy_error": 10}
    assert all(t.error == "gone" for t in read_records(out, Trajectory))


def test_duplicate_task_ids_are_refused(tmp_path):
    env = LookupDefinition()
    t = env.tasks("test")[0]
    with pytest.raises(ValueError, match="twice"):
        rollout(env, [t, t], ExpertPolicy(env), tmp_path / "x.jsonl")
