"""An episode that times out while its environment is inside a call: interrupted, then closed only after the call.

Closing an environment from another thread while it still runs a call (SQLite closed under a running statement)
crashed the whole process with SIGSEGV; the engine must interrupt the call and close on the worker when it returns.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agenttuning.envs.base import Environment, StepResult
from agenttuning.rollout.engine import EpisodeLimits, run_episode
from tests.toy_env import LookupDefinition, Scripted

ROOT = Path(__file__).resolve().parents[2]


class BlockingEnv(Environment):
    """``step`` blocks until ``release`` is set; records whether ``close`` ever ran while a step was running."""

    def __init__(self, interruptible: bool):
        self.release = threading.Event()
        self.started = threading.Event()
        self.running = False
        self.closed = threading.Event()
        self.closed_while_running: bool | None = None
        if interruptible:
            self.interrupt = self.release.set  # thread-safe, as the Environment contract asks

    def reset(self, task):
        return "go"

    def step(self, action):
        self.running = True
        self.started.set()
        try:
            self.release.wait(10)
            return StepResult("done waiting")
        finally:
            self.running = False

    def close(self):
        self.closed_while_running = self.running
        self.closed.set()


class BlockingDefinition(LookupDefinition):
    def __init__(self, interruptible: bool):
        super().__init__()
        self.interruptible = interruptible
        self.instances: list[BlockingEnv] = []

    def make(self):
        self.instances.append(BlockingEnv(self.interruptible))
        return self.instances[-1]


# long enough that the step has surely begun when it fires, even on a loaded machine
LIMITS = EpisodeLimits(timeout_s=0.6)


def test_timeout_never_closes_the_environment_under_a_running_step():
    env = BlockingDefinition(interruptible=False)

    async def main():
        t0 = time.perf_counter()
        traj = await run_episode(env, env.tasks("test")[0], Scripted(["Action: lookup a"]), limits=LIMITS)
        returned_after = time.perf_counter() - t0
        inst = env.instances[0]
        assert inst.started.is_set(), "the timeout fired before the step began (machine overloaded?)"
        # the trajectory comes back on time, but the environment is still in its step: it must not be closed yet
        closed_early = inst.closed.wait(0.3)
        inst.release.set()
        closed_later = await asyncio.to_thread(inst.closed.wait, 5)
        return traj, returned_after, closed_early, closed_later, inst

    traj, returned_after, closed_early, closed_later, inst = asyncio.run(main())
    assert traj.end_reason == "timeout" and returned_after < LIMITS.timeout_s + 1.0
    assert not closed_early, "close() ran while step() was still running"
    assert closed_later and inst.closed_while_running is False


def test_timeout_interrupts_the_running_call_then_closes_after_it_returns():
    env = BlockingDefinition(interruptible=True)

    async def main():
        traj = await run_episode(env, env.tasks("test")[0], Scripted(["Action: lookup a"]), limits=LIMITS)
        closed = await asyncio.to_thread(env.instances[0].closed.wait, 5)
        return traj, closed

    traj, closed = asyncio.run(main())
    inst = env.instances[0]
    assert traj.end_reason == "timeout" and inst.started.is_set()
    assert inst.release.is_set(), "the engine did not interrupt the running call"
    assert closed and inst.closed_while_running is False


DB_TIMEOUT_RUN = """
import sys
from agenttuning.envs.base import get
from agenttuning.jsonl import read_records
from agenttuning.policies.base import Policy, Reply
from agenttuning.rollout.engine import EpisodeLimits, rollout
from agenttuning.schema import Trajectory

SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000) SELECT count(*) FROM c;"

class LongQuery(Policy):
    name = "long-query"
    async def act(self, messages, *, task):
        return Reply("Thought: count forever.\\nAction: Operation\\n```sql\\n" + SQL + "\\n```")

env = get("db")
tasks = env.tasks("test")[:12]
rollout(env, tasks, LongQuery(), sys.argv[1], concurrency=4, limits=EpisodeLimits(timeout_s=0.2))
trajs = read_records(sys.argv[1], Trajectory)
assert sorted(t.task.id for t in trajs) == sorted(t.id for t in tasks), "missing trajectories"
assert {t.end_reason for t in trajs} == {"timeout"}, {t.end_reason for t in trajs}
print("ok", len(trajs))
"""


def test_db_episode_timeout_during_a_running_statement_does_not_crash_the_run(tmp_path):
    # a subprocess, so that a SIGSEGV fails this test instead of killing pytest
    out = tmp_path / "db.jsonl"
    proc = subprocess.run([sys.executable, "-c", DB_TIMEOUT_RUN, str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ})  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "ok 12"
