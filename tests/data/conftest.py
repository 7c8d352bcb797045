"""Fixtures for the data tests: real db-v1 expert trajectories and the db test-split index."""

from __future__ import annotations

import pytest

from agenttuning.schema import Trajectory


@pytest.fixture(scope="session")
def db():
    from agenttuning.envs.base import get

    return get("db")


@pytest.fixture(scope="session")
def db_trajectories_file(db, tmp_path_factory):
    """20 db-v1 train tasks solved by the expert through the real rollout engine, as the engine's JSONL."""
    from agenttuning.policies import make_policy
    from agenttuning.rollout.engine import rollout

    out = tmp_path_factory.mktemp("rollout") / "db.jsonl"
    summary = rollout(db, db.tasks("train")[:20], make_policy("expert", env=db), out)
    assert summary.finished == 20 and summary.successes == 20
    return out


@pytest.fixture(scope="session")
def db_trajectories(db_trajectories_file):
    from agenttuning.jsonl import read_records

    trajs = read_records(db_trajectories_file, Trajectory)
    return sorted(trajs, key=lambda t: t.task.id)


@pytest.fixture(scope="session")
def db_index(db):
    from agenttuning.data.decontam import ContaminationIndex

    return ContaminationIndex.build(db.tasks("test"))
