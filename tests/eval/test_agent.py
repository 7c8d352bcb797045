"""Agent evaluation: expert/wrong scores with intervals, held-in/held-out grouping, results.json, resume."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from agenttuning.data.formats import write_agentinstruct
from agenttuning.envs import base
from agenttuning.eval.agent import evaluate_agent, families_in, load_agent_result, select_envs
from agenttuning.eval.stats import Z95
from agenttuning.jsonl import read_records
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from agenttuning.schema import Trajectory
from tests.toy_env import LookupDefinition

Z2 = Z95**2


def by_env(result):
    return {e.env: e for e in result.envs}


def test_expert_and_wrong_on_db_and_the_toy_family(registry, tmp_path):
    expert = evaluate_agent("expert", ["db", "lookup"], held_in={"db"}, out_dir=tmp_path / "expert", n=4)
    wrong = evaluate_agent("wrong", ["db-v1", "lookup-v1"], held_in={"db"}, out_dir=tmp_path / "wrong", n=4)
    for env, e in by_env(expert).items():
        assert (e.n, e.successes, e.success_rate, e.mean_reward) == (4, 4, 1.0, 1.0), env
        assert e.success_ci == (pytest.approx(4 / (4 + Z2)), 1.0)  # Wilson, all solved: [n/(n+z^2), 1]
        assert e.reward_ci == (1.0, 1.0)
        assert e.end_reasons == {"done": 4} and e.ran_now == 4
    for env, e in by_env(wrong).items():
        assert (e.successes, e.success_rate, e.mean_reward) == (0, 0.0, 0.0), env
        assert e.success_ci == (0.0, pytest.approx(Z2 / (4 + Z2)))
        assert e.end_reasons == {"done": 4}
    assert [e.group for e in expert.envs] == ["held-in", "held-out"]
    text = _render(expert.table())
    assert "db-v1" in text and "lookup-v1" in text and "held-in" in text


def _render(table):
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_grouping_and_selection(registry, tmp_path):
    held_in = {"db", "lookup", "lookup_ho"}  # lookup_ho declares held_out=True: held-out anyway
    names = lambda defs: [d.name for d in defs]
    assert names(select_envs(["held-in"], held_in)) == ["db", "lookup"]
    assert names(select_envs(["held-out"], held_in)) == ["lookup_ho"]
    assert names(select_envs(["held-out"], {"db"})) == ["lookup", "lookup_ho"]
    assert names(select_envs(None, {"db"})) == ["db", "lookup", "lookup_ho"]
    assert names(select_envs(["lookup-v1", "all"], {"db"})) == ["lookup", "db", "lookup_ho"]
    with pytest.raises(ValueError, match="held-in"):
        select_envs(["held-in"], None)
    with pytest.raises(KeyError, match="registered version"):
        select_envs(["db-v9"], None)

    r = evaluate_agent("expert", ["all"], held_in=["db-v1", "lookup_ho"], out_dir=tmp_path, n=2)
    assert {e.env: e.group for e in r.envs} == {"db": "held-in", "lookup": "held-out", "lookup_ho": "held-out"}
    assert r.groups() == {"held-in": ["db-v1"], "held-out": ["lookup-v1", "lookup_ho-v1"]}
    assert r.held_in == ["db", "lookup_ho"]


def test_a_group_word_leaves_out_a_family_that_cannot_run_here_and_says_why(registry, caplog):
    class Missing(LookupDefinition):
        name = "lookup_missing"

        def unavailable_reason(self):
            return "the widget is not installed"

    base.register(Missing())
    names = lambda defs: [d.name for d in defs]
    with caplog.at_level("WARNING", logger="agenttuning.eval.agent"):
        assert "lookup_missing" not in names(select_envs(["all"], {"db"}))
    assert "leaves out lookup_missing-v1: the widget is not installed" in caplog.text
    assert names(select_envs(["lookup_missing"], {"db"})) == ["lookup_missing"]  # named outright: selected


def test_held_in_families_from_agentinstruct_data(registry, tmp_path):
    env = registry["lookup"]
    train = rollout(env, env.tasks("train")[:2], ExpertPolicy(env), tmp_path / "traj.jsonl")
    write_agentinstruct(train.trajectories, tmp_path / "agentinstruct")
    assert families_in(tmp_path / "agentinstruct") == {"lookup"}
    r = evaluate_agent("expert", ["lookup", "lookup_ho"], held_in=tmp_path / "agentinstruct",
                       out_dir=tmp_path / "eval", n=1)  # fmt: skip
    assert [(e.env, e.group) for e in r.envs] == [("lookup", "held-in"), ("lookup_ho", "held-out")]
    # no training data known: everything is held-out
    r = evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path / "base", n=1)
    assert r.envs[0].group == "held-out" and r.held_in is None


def test_results_json_records_ids_and_prompt_hashes(registry, tmp_path):
    r = evaluate_agent("expert", ["db", "lookup"], held_in={"lookup"}, out_dir=tmp_path, n=2)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(e["env_id"], e["prompt_hash"]) for e in data["envs"]] == [
        ("db-v1", registry["db"].prompt_hash),
        ("lookup-v1", registry["lookup"].prompt_hash),
    ]
    assert data["policy"] == "expert" and data["n"] == 2 and data["held_in"] == ["lookup"]
    assert data["envs"][0]["trajectories"] == "db-v1.jsonl"
    assert data["bootstrap"]["seed"] == 0
    assert load_agent_result(tmp_path) == r
    assert r.scores() == {"db-v1": 1.0, "lookup-v1": 1.0}
    trajs = read_records(tmp_path / "lookup-v1.jsonl", Trajectory)
    assert sorted(t.task.id for t in trajs) == ["lookup-test-0000", "lookup-test-0001"]


def test_resume_runs_only_unfinished_tasks(registry, tmp_path):
    first = evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=2)
    assert first.envs[0].ran_now == 2
    second = evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=5)
    assert (second.envs[0].ran_now, second.envs[0].n, second.envs[0].successes) == (3, 5, 5)
    third = evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=5)
    assert third.envs[0].ran_now == 0 and third.envs[0].n == 5
    ids = [t.task.id for t in read_records(tmp_path / "lookup-v1.jsonl", Trajectory)]
    assert sorted(ids) == [f"lookup-test-{i:04d}" for i in range(5)]  # nothing ran twice
    # another policy in the same folder would mix two models' episodes: refused
    with pytest.raises(ValueError, match="policy 'expert'"):
        evaluate_agent("wrong", ["lookup"], held_in=None, out_dir=tmp_path, n=5)
    with pytest.raises(FileExistsError):
        evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=5, resume=False)
    assert not (tmp_path / "results.json").exists()  # a failed call leaves no results.json behind


class Reworded(LookupDefinition):
    @property
    def system_prompt(self) -> str:
        return "Find words, please. Reply 'Thought: ...' then 'Action: lookup KEY' or 'Action: answer WORD'."


def test_resume_refuses_trajectories_of_another_prompt(registry, tmp_path, monkeypatch):
    evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=1)
    monkeypatch.setitem(base._REGISTRY, "lookup", Reworded(n_test=5))  # same id, different prompt
    with pytest.raises(ValueError, match="prompt hash"):
        evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path, n=2)


def test_a_ready_policy_object_is_shared_and_closed(registry, tmp_path):
    class Tracked(ExpertPolicy):
        closed = 0

        async def aclose(self) -> None:
            Tracked.closed += 1

    r = evaluate_agent(Tracked(registry["lookup"]), ["lookup"], held_in=None, out_dir=tmp_path, n=3)
    assert (r.policy, r.policy_name, r.envs[0].successes, Tracked.closed) == ("expert", "expert", 3, 1)


def test_the_table_ends_with_each_groups_unweighted_overall(registry, tmp_path):
    r = evaluate_agent("noisy:0.5", ["db", "lookup", "lookup_ho"], held_in={"db"}, out_dir=tmp_path, n=4)
    means = r.group_means()
    envs = by_env(r)
    held_out = [envs["lookup"], envs["lookup_ho"]]
    assert means["held-in"] == (envs["db"].success_rate, envs["db"].mean_reward, 1)
    assert means["held-out"] == (sum(e.success_rate for e in held_out) / 2, sum(e.mean_reward for e in held_out) / 2, 2)
    text = _render(r.table())
    assert "overall (1 environment)" in text and "overall (2 environments)" in text
    assert f"{means['held-out'][1]:.3f}" in text
