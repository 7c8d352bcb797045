"""Every registered family served by ``env-serve`` and played through ``remote:URL`` is the same family: the same
id, prompts and tasks, and the expert's episodes over HTTP are step for step the ones played in-process."""

from __future__ import annotations

import pytest

from agenttuning.envs.base import available
from agenttuning.envs.remote import RemoteDefinition
from agenttuning.serve.env_app import create_env_app
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from tests.envs.remote.servers import running

SAMPLE = 2  # test tasks per family: each family's full expert sweep is the conformance test's job


def _played(trajectories):
    return {t.task.id: (t.initial_observation, [(s.thought, s.action, s.observation, s.reward, s.terminated,
                                                  s.truncated) for s in t.steps], t.end_reason, t.reward, t.success)
            for t in trajectories}


@pytest.mark.parametrize("definition", available(), ids=lambda d: d.id)
def test_the_remote_copy_of_every_family_plays_the_experts_episodes_exactly(definition, tmp_path):
    if definition.unavailable_reason() is not None:  # said, not counted as passing
        pytest.skip(f"{definition.id} cannot run here: {definition.unavailable_reason()}")
    n = min(SAMPLE, definition.test_sample or SAMPLE)
    with running(create_env_app(definition)) as server:
        remote = RemoteDefinition(server.url)
        assert (remote.id, remote.max_turns, remote.prompt_hash) == (definition.id, definition.max_turns,
                                                                     definition.prompt_hash)
        assert remote.context() == definition.context()
        for split in ("train", "test"):
            assert [(t.id, t.split, t.instruction) for t in remote.tasks(split)] == [
                (t.id, t.split, t.instruction) for t in definition.tasks(split)]
        assert remote.invalid_action("no Action: line") == definition.invalid_action("no Action: line")
        here = rollout(definition, definition.tasks("test")[:n], ExpertPolicy(definition), tmp_path / "here.jsonl",
                       concurrency=1)
        there = rollout(remote, remote.tasks("test")[:n], ExpertPolicy(remote), tmp_path / "there.jsonl",
                        concurrency=1)
    assert here.successes == n, [(t.task.id, t.end_reason, t.error) for t in here.trajectories]
    assert there.successes == n, [(t.task.id, t.end_reason, t.error) for t in there.trajectories]
    assert _played(there.trajectories) == _played(here.trajectories)


@pytest.mark.parametrize("family", ["lookup", "db"])
def test_the_conformance_checker_passes_a_remote_copy_with_its_expert_served_remotely(family):
    from agenttuning.envs.base import get
    from agenttuning.rollout.conformance import check_env
    from tests.toy_env import LookupDefinition

    definition = LookupDefinition(n_train=3, n_test=4) if family == "lookup" else get(family)
    with running(create_env_app(definition)) as server:
        remote = RemoteDefinition(server.url)
        report = check_env(remote, max_tasks=3)  # adversarial actions, interrupt and close travel over HTTP too
        stats = remote.http.stats
    assert report.passed, [(r.name, r.detail) for r in report.failures()]
    assert len(report.results) == 10
    assert stats["failures"] == 0 and stats["requests"] > 50  # it all went over the wire, and nothing failed
