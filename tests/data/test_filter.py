"""Trajectory filtering: per-family reward thresholds, unparsable and unfinished episodes, token budgets, stats."""

from __future__ import annotations

import json

from rich.console import Console

from agenttuning.data.filter import (
    PAPER_MIN_REWARD,
    approx_tokens,
    conversation_text,
    filter_trajectories,
    stats_table,
    write_stats,
)
from tests.data.builders import make_traj


def test_expert_db_trajectories_all_pass(db_trajectories):
    r = filter_trajectories(db_trajectories)
    assert r.kept == db_trajectories and not r.dropped
    row = r.rows[0]
    assert (row.env, row.total, row.kept, row.kept_pct) == ("db-v1", 20, 20, 100.0)
    assert row.mean_turns == round(sum(len(t.steps) for t in db_trajectories) / 20, 2)
    tokens = [approx_tokens(conversation_text(t)) for t in db_trajectories]
    assert row.mean_tokens == round(sum(tokens) / 20, 1)


def test_paper_thresholds_reward_one_except_two_thirds_for_mind2web():
    trajs = [
        make_traj("db-1", "db-v1", reward=1.0),
        make_traj("db-2", "db-v1", reward=2 / 3),
        make_traj("db-3", "db-v1", reward=0.0),
        make_traj("m2w-1", "mind2web-v2", reward=2 / 3),
        make_traj("m2w-2", "mind2web-v2", reward=0.5),
        make_traj("m2w-3", "mind2web-v2", reward=1.0),
    ]
    r = filter_trajectories(trajs, min_reward=PAPER_MIN_REWARD)
    assert [t.task.id for t in r.kept] == ["db-1", "m2w-1", "m2w-3"]
    assert r.dropped == {"low_reward": 3}
    # one number for every family, or a mapping with a default
    assert [t.task.id for t in filter_trajectories(trajs, min_reward=0.5).kept] == ["db-1", "db-2", "m2w-1",
                                                                                     "m2w-2", "m2w-3"]  # fmt: skip
    kept = filter_trajectories(trajs, min_reward={"*": 0.0, "db": 1.0}).kept
    assert [t.task.id for t in kept] == ["db-1", "m2w-1", "m2w-2", "m2w-3"]
    # require_success drops the 2/3 Mind2Web episode that the threshold keeps
    r = filter_trajectories(trajs, require_success=True)
    assert [t.task.id for t in r.kept] == ["db-1", "m2w-3"] and r.dropped == {"low_reward": 3, "not_success": 1}


def test_unparsable_unfinished_and_long_trajectories_are_dropped_with_their_reason():
    trajs = [
        make_traj("ok"),
        make_traj("bad-format", parse_error_at=0, n_steps=3),
        make_traj("cut", end_reason="max_turns", reward=0.0),
        make_traj("repeat", end_reason="repeated_action", reward=1.0),  # even with reward 1: not finished
        make_traj("long", obs_text="x" * 4000, n_steps=3),
    ]
    r = filter_trajectories(trajs, max_tokens=500)
    assert [t.task.id for t in r.kept] == ["ok"]
    assert r.dropped == {"parse_error": 1, "not_done": 2, "too_long": 1}
    # the budget counts the whole conversation with the given counter: words here
    words = len(conversation_text(trajs[4]).split())
    r = filter_trajectories(trajs, max_tokens=words, count_tokens=lambda s: len(s.split()))
    assert [t.task.id for t in r.kept] == ["ok", "long"]
    assert filter_trajectories(trajs[4:], max_tokens=words - 1, count_tokens=lambda s: len(s.split())).kept == []


def test_stats_rows_table_and_json(tmp_path):
    trajs = [make_traj(f"db-{i}", "db-v1", reward=1.0 if i < 3 else 0.0, n_steps=i + 1) for i in range(4)]
    trajs += [make_traj("os-0", "os-v1", n_steps=5), make_traj("os-1", "os-v1", parse_error_at=1)]
    r = filter_trajectories(trajs, count_tokens=lambda s: 10)
    db, os_, total = r.rows
    assert (db.env, db.total, db.kept, db.kept_pct, db.mean_turns, db.mean_tokens) == ("db-v1", 4, 3, 75.0, 2.0, 10.0)
    assert db.dropped == {"low_reward": 1}
    assert (os_.total, os_.kept, os_.kept_pct, os_.mean_turns, os_.dropped) == (2, 1, 50.0, 5.0, {"parse_error": 1})
    assert (total.env, total.total, total.kept, total.kept_pct, total.mean_turns) == ("all", 6, 4, 66.67, 2.75)
    assert total.dropped == {"parse_error": 1, "low_reward": 1}

    console = Console(record=True, width=140)
    console.print(stats_table(r))
    text = console.export_text()
    assert "db-v1" in text and "75.0" in text and "66.7" in text and "low_reward 1" in text

    write_stats(r, tmp_path / "stats.json")
    data = json.loads((tmp_path / "stats.json").read_text())
    assert data["dropped"] == {"low_reward": 1, "parse_error": 1}
    assert data["envs"][0] == {"env": "db-v1", "total": 4, "kept": 3, "kept_pct": 75.0, "mean_turns": 2.0,
                               "mean_tokens": 10.0, "dropped": {"low_reward": 1}}  # fmt: skip
    assert data["settings"]["min_reward"] == {"*": 1.0, "mind2web": 2 / 3}


def test_empty_input_gives_an_all_row():
    r = filter_trajectories([])
    assert r.kept == [] and [(x.env, x.total, x.kept_pct) for x in r.rows] == [("all", 0, 0.0)]
    Console(record=True).print(stats_table(r))
