"""A local Hugging Face model acting in a real environment through the engine (tiny random-init Llama, real
Llama 3 tokenizer, no download): its replies are garbage, so episodes must end cleanly on the engine's limits, and
the requests of concurrent episodes must be batched into shared generate calls."""

from __future__ import annotations

from agenttuning.jsonl import read_records
from agenttuning.policies.hf import HFPolicy
from agenttuning.rollout.engine import EpisodeLimits, rollout
from agenttuning.schema import Trajectory
from tests.tiny_models import tiny_llama3
from tests.toy_env import LookupDefinition


def test_tiny_model_episodes_end_cleanly_and_batch_across_episodes(tmp_path):
    model, tok = tiny_llama3()
    policy = HFPolicy(model, tokenizer=tok, max_new_tokens=8, batch_size=8, batch_wait_ms=20)
    env = LookupDefinition(n_test=8)
    out = tmp_path / "o.jsonl"
    s = rollout(env, env.tasks("test"), policy, out, concurrency=8, limits=EpisodeLimits(max_turns=2))
    trajs = read_records(out, Trajectory)
    assert len(trajs) == 8 and s.end_reasons.keys() <= {"max_turns", "done", "repeated_action"}
    # random weights almost never emit the action format: each such reply got the invalid-action feedback
    invalid = [st for t in trajs for st in t.steps if st.parse_error]
    assert all(st.observation.startswith("Invalid action") for st in invalid)
    assert all(t.usage.requests == len(t.steps) and t.usage.completion_tokens > 0 for t in trajs)
    assert policy.stats["requests"] == sum(len(t.steps) for t in trajs)
    assert policy.stats["batches"] < policy.stats["requests"] and policy.stats["max_batch"] > 1
