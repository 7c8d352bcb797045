"""Killed runs resume without losing, duplicating or tearing a trajectory; shards cover the task list exactly."""

from __future__ import annotations

import json

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agenttuning.jsonl import RecordError, read_records
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import finished_ids, in_shard, parse_shard, rollout, select_tasks
from agenttuning.schema import Trajectory
from tests.toy_env import LookupDefinition

ROOT = Path(__file__).resolve().parents[2]

SLOW_RUN = """
import asyncio, sys
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from tests.toy_env import LookupDefinition

class Slow(ExpertPolicy):
    async def act(self, messages, *, task):
        await asyncio.sleep(0.01)
        return await super().act(messages, task=task)

env = LookupDefinition(n_test=400)
print("started", flush=True)
rollout(env, env.tasks("test"), Slow(env), sys.argv[1], concurrency=4, resume=True)
"""


def test_sigkill_mid_run_then_resume_gives_every_task_exactly_once(tmp_path):
    out = tmp_path / "run.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, str(out)], cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout.readline().strip() == b"started"
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 40):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = out.read_bytes().count(b"\n")
    assert 40 <= n_before < 400, "the kill must land mid-run"

    env = LookupDefinition(n_test=400)
    s = rollout(env, env.tasks("test"), ExpertPolicy(env), out, concurrency=8, resume=True)
    ids = [t.task.id for t in read_records(out, Trajectory)]
    assert len(ids) == len(set(ids)) == 400
    assert s.skipped + s.finished == 400 and s.skipped >= n_before - 1
    assert out.read_bytes().endswith(b"\n")


def test_torn_last_line_is_cut_on_resume(tmp_path):
    env = LookupDefinition(n_test=6)
    out = tmp_path / "run.jsonl"
    rollout(env, env.tasks("test")[:3], ExpertPolicy(env), out)
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    # a writer killed half-way through its 3rd line
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    # episodes run concurrently and finish in any order: the first two lines hold whichever finished first
    assert finished_ids(out) == {json.loads(line)["task"]["id"] for line in lines[:2]}
    s = rollout(env, env.tasks("test"), ExpertPolicy(env), out, resume=True)
    assert (s.skipped, s.finished) == (2, 4)
    ids = [t.task.id for t in read_records(out, Trajectory)]
    assert sorted(ids) == sorted(t.id for t in env.tasks("test"))


def test_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path):
    env = LookupDefinition(n_test=3)
    out = tmp_path / "run.jsonl"
    rollout(env, env.tasks("test"), ExpertPolicy(env), out)
    lines = out.read_text().splitlines(keepends=True)
    lines[1] = '{"task": {"id": "x"}, "steps": []}\n'
    out.write_text("".join(lines))
    before = out.read_bytes()
    with pytest.raises(RecordError) as e:
        rollout(env, env.tasks("test"), ExpertPolicy(env), out, resume=True)
    assert str(e.value).startswith(f"{out}:2: ")
    assert out.read_bytes() == before  # nothing written, nothing lost


def test_four_shards_cover_the_task_list_exactly(tmp_path):
    env = LookupDefinition(n_test=200)
    tasks = env.tasks("test")
    shards = [select_tasks(tasks, shard=(k, 4)) for k in range(1, 5)]
    ids = [t.id for s in shards for t in s]
    assert len(ids) == len(set(ids)) == 200
    assert all(len(s) > 20 for s in shards)  # roughly balanced, none empty
    # run them as four separate rollouts and concatenate the outputs
    for k in range(1, 5):
        rollout(env, tasks, ExpertPolicy(env), tmp_path / f"s{k}.jsonl", shard=(k, 4))
    got = [t.task.id for k in range(1, 5) for t in read_records(tmp_path / f"s{k}.jsonl", Trajectory)]
    assert sorted(got) == sorted(t.id for t in tasks)
    # the assignment depends on the id only, not the list it came in
    assert all(in_shard(t.id, 2, 4) for t in select_tasks(list(reversed(tasks)), shard=(2, 4)))


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("0/4", "5/4", "x", "1/"):
        with pytest.raises(ValueError):
            parse_shard(bad)
