"""Real episodes through the openai policy and a real HTTP server on loopback, with faults injected.

The server's replies come from the environment's expert, so episodes can succeed; faults (429, 500, slow replies,
malformed JSON, dropped connections) must be retried, and a fault that persists must end as a cleanly recorded
failed episode, never as a crash of the run.
"""

from __future__ import annotations

import pytest

from agenttuning.jsonl import read_records
from agenttuning.policies import make_policy
from agenttuning.rollout.engine import EpisodeLimits, rollout
from agenttuning.schema import Trajectory, Turn
from tests.openai_server import FakeOpenAIServer
from tests.toy_env import LookupDefinition


def expert_responder(env, tasks):
    """An HTTP 'model' that answers like the environment's expert, finding the task by its first observation."""
    by_obs = {}
    for t in tasks:
        inst = env.make()
        by_obs[inst.reset(t)] = t
        inst.close()
    n_ctx = len(env.context())

    def respond(messages):
        turns = [Turn(role=m["role"], content=m["content"]) for m in messages]
        return env.expert(by_obs[turns[n_ctx].content], turns[n_ctx:])

    return respond


def policy_for(srv, **kw):
    opts = dict(base_url=srv.base_url, api_key="sk-test", timeout=0.5, max_retries=3, backoff_base=0.01,
                backoff_max=0.05)
    opts.update(kw)
    return make_policy("openai:teacher", **opts)


def test_episodes_over_http_succeed_and_record_usage(tmp_path):
    env = LookupDefinition(n_test=12)
    tasks = env.tasks("test")
    with FakeOpenAIServer(expert_responder(env, tasks)) as srv:
        s = rollout(env, tasks, policy_for(srv), tmp_path / "o.jsonl", concurrency=4)
        assert srv.request_count == 24  # two replies per episode, no retries
    trajs = read_records(tmp_path / "o.jsonl", Trajectory)
    assert s.successes == 12 and all(t.policy == "openai:teacher" for t in trajs)
    assert all(t.usage.requests == 2 and t.usage.prompt_tokens > 0 and t.usage.completion_tokens > 0 for t in trajs)
    # the server saw the exact conversation: the instructions first, then "Ok."
    body = srv.requests[0].body
    assert body["model"] == "teacher" and body["messages"][0]["content"] == env.system_prompt
    assert body["messages"][1] == {"role": "assistant", "content": "Ok."}


@pytest.mark.parametrize("fault", ["429", "500", "slow", "malformed", "drop"])
def test_transient_faults_are_retried_and_episodes_still_succeed(tmp_path, fault):
    env = LookupDefinition(n_test=3)
    tasks = env.tasks("test")
    with FakeOpenAIServer(expert_responder(env, tasks)) as srv:
        srv.inject(fault, times=2, delay=1.0)
        s = rollout(env, tasks, policy_for(srv), tmp_path / "o.jsonl", concurrency=1)
        assert srv.request_count == 6 + 2
    assert s.successes == 3 and s.end_reasons == {"done": 3}


def test_persistent_failure_is_a_recorded_failed_episode_and_the_run_goes_on(tmp_path):
    env = LookupDefinition(n_test=6)
    tasks = env.tasks("test")
    out = tmp_path / "o.jsonl"
    with FakeOpenAIServer(expert_responder(env, tasks)) as srv:
        srv.inject("500", times=None)
        s = rollout(env, tasks[:3], policy_for(srv), out, concurrency=2, limits=EpisodeLimits(timeout_s=30))
        assert srv.request_count == 3 * 4  # 1 try + 3 retries per episode
        srv.clear_faults()
        s2 = rollout(env, tasks, policy_for(srv), out, concurrency=2, resume=True)
    assert s.end_reasons == {"policy_error": 3} and s.finished == 3
    trajs = read_records(out, Trajectory)
    failed = [t for t in trajs if t.end_reason == "policy_error"]
    assert len(failed) == 3 and all("500" in t.error and not t.success for t in failed)
    assert s2.skipped == 3 and s2.successes == 3 and len(trajs) == 6
