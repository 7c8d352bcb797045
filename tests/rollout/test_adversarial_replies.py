"""Model output is data: any reply is recorded, none can end the run or stall the other episodes.

Replies come through a real loopback OpenAI-compatible server where the text matters on the wire (lone UTF-16
surrogates arrive as JSON ``"\\ud800"`` escapes), and from scripted policies for size and timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import pytest

from agenttuning.jsonl import read_records
from agenttuning.policies import make_policy
from agenttuning.policies.base import Policy, Reply
from agenttuning.rollout.engine import EpisodeLimits, TrajectoryWriteError, rollout, run_episode
from agenttuning.schema import Trajectory
from tests.openai_server import FakeOpenAIServer
from tests.toy_env import LookupDefinition, LookupEnv, Scripted


def test_surrogates_and_nuls_in_replies_from_a_real_server_are_recorded(tmp_path):
    env = LookupDefinition(n_test=4)

    def respond(messages):
        if not any(m["content"].startswith("Thought: odd") for m in messages):  # the first step
            return "Thought: odd \ud800 bytes \udfff\x00 here\nAction: lookup k\x00ey"
        return "Thought: done\nAction: answer nope"

    out = tmp_path / "t.jsonl"
    with FakeOpenAIServer(respond) as srv:
        policy = make_policy("openai:m", base_url=srv.base_url, api_key="sk-test", timeout=5, max_retries=0)
        s = rollout(env, env.tasks("test"), policy, out, concurrency=2)
    trajs = read_records(out, Trajectory)
    assert s.finished == 4 and len(trajs) == 4 and {t.end_reason for t in trajs} == {"done"}
    first = trajs[0].steps[0]
    assert first.thought == "odd \ufffd bytes \ufffd\x00 here"  # surrogates replaced, the NUL kept as data
    assert first.action == "lookup k\x00ey"
    assert "surrogates" in (first.reply_note or "") and trajs[0].steps[1].reply_note is None


class OddObservations(LookupDefinition):
    """A third-party environment whose observations hold a lone surrogate: written all the same."""

    def make(self):
        class Env(LookupEnv):
            def step(self, action):
                r = super().step(action)
                return replace(r, observation=r.observation + " \udc80")

        return Env(self)


def test_text_from_an_environment_that_utf8_cannot_encode_is_still_written(tmp_path):
    from agenttuning.policies.baselines import ExpertPolicy

    env = OddObservations(n_test=3)
    out = tmp_path / "t.jsonl"
    rollout(env, env.tasks("test"), ExpertPolicy(env), out)
    trajs = read_records(out, Trajectory)
    assert len(trajs) == 3 and all(t.steps[0].observation.endswith(" \ufffd") for t in trajs)


class Unserialisable:
    """What a third-party environment might leave in a task payload (an array type, a handle): not JSON."""


def test_one_unwritable_trajectory_is_reported_and_the_others_are_written(tmp_path, caplog):
    from agenttuning.policies.baselines import ExpertPolicy

    env = LookupDefinition(n_test=6, extra={"lookup-test-0002": {"blob": Unserialisable()}})
    out = tmp_path / "t.jsonl"
    with caplog.at_level(logging.ERROR), pytest.raises(TrajectoryWriteError, match="1 of 6 .*lookup-test-0002"):
        rollout(env, env.tasks("test"), ExpertPolicy(env), out, concurrency=3)
    written = sorted(t.task.id for t in read_records(out, Trajectory))
    assert written == [t.id for t in env.tasks("test") if t.id != "lookup-test-0002"]
    assert "lookup-test-0002" in caplog.text


def test_a_huge_reply_is_cut_to_the_limit_and_noted():
    env = LookupDefinition()
    reply = "Thought: " + "x" * 2_000_000 + "\nAction: lookup a"
    limits = EpisodeLimits(max_turns=1, max_reply_chars=65536)
    t = asyncio.run(run_episode(env, env.tasks("test")[0], Scripted([reply]), limits=limits))
    step = t.steps[0]
    assert step.parse_error and len(step.raw) == 65536  # the action was past the cut
    assert step.reply_note == "cut from 2000026 to 65536 characters"


class Slow(Policy):
    """A well-behaved episode: many short steps, each waiting on the 'network'."""

    name = "slow"

    def __init__(self, env):
        self.env = env

    async def act(self, messages, *, task):
        await asyncio.sleep(0.01)
        return Reply("Thought: again\nAction: lookup " + str(len(messages)))


def test_an_adversarial_reply_does_not_stall_the_other_episodes():
    # 24 KB of mark lines: the old quadratic parse took seconds on the event loop, freezing every episode
    env = LookupDefinition()
    bad, good = env.tasks("test")[:2]
    gaps: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def main():
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        a = run_episode(env, bad, Scripted(["*\n" * 12_000]), limits=EpisodeLimits(timeout_s=2))
        b = run_episode(env, good, Slow(env), limits=EpisodeLimits(max_turns=6, max_repeats=0, timeout_s=5))
        ta, tb = await asyncio.gather(a, b)
        stop.set()
        await beat
        return ta, tb

    ta, tb = asyncio.run(main())
    assert ta.end_reason == "max_turns"  # every reply refused, well within its timeout
    assert tb.end_reason == "max_turns" and len(tb.steps) == 6
    # (the old parse held the loop 2.7 s per reply; the bound leaves room for a loaded machine)
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
