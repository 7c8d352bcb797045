"""The ``kg`` environment on the real graph: data, tasks and splits, each tool, invalid actions, grading, the expert
through the real rollout engine and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter

import pytest
from typer.testing import CliRunner

from agenttuning.envs import base
from agenttuning.envs.kg import data, definition, grading, tasks, tools
from agenttuning.envs.kg.definition import _EXAMPLE_ENTITIES, _EXAMPLE_QUESTION
from agenttuning.envs.kg.templates import TEMPLATES
from agenttuning.jsonl import read_records
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Task, Trajectory, Turn, normalise_text

D = definition()
G = data.graph()


def make_task(kind: str = "set", answer=("French", "German"), entities=("Belgium",)) -> Task:
    return Task(id="kg-probe", env=D.id, split="test", instruction="A probe question?",
                payload={"template": "probe", "entities": list(entities), "kind": kind,
                         "answer": answer if kind == "count" else list(answer), "plan": []})


def play(actions: list[str], task: Task | None = None) -> list[base.StepResult]:
    """Run actions in one episode until it ends; return every StepResult."""
    results = []
    with D.make() as env:
        env.reset(task or make_task())
        for a in actions:
            results.append(env.step(a))
            if results[-1].terminated or results[-1].truncated:
                break
    return results


def observe(*actions: str) -> str:
    return play(list(actions))[-1].observation


# --------------------------------------------------------------------------------------------------------------
# The graph


def test_graph_holds_real_related_facts():
    assert {"Germany", "Belgium", "Spain"} <= G.neighbors("France", "borders")
    assert G.neighbors("France", "capital") == {"Paris"} and G.neighbors("Paris", "capital_of") == {"France"}
    assert G.neighbors("Lima", "capital_of") == {"Peru"} and G.neighbors("Peru", "currency") == {"Sol"}
    assert G.neighbors("Japan", "currency") == {"Yen"} and G.neighbors("Japan", "continent") == {"Asia"}
    assert {"Germany", "France", "Italy"} <= G.neighbors("Euro", "used_in")
    assert "France" in G.neighbors("French", "spoken_in") and "French" in G.neighbors("France", "languages")
    assert "France" in G.neighbors("Europe", "countries") and "France" in G.neighbors("Western Europe", "countries")
    assert {"Paris", "Marseille", "Lyon"} <= G.neighbors("France", "major_cities")
    assert G.neighbors("Marseille", "country") == {"France"} and "capital_of" not in G.relations("Marseille")
    kinds = Counter(G.kind.values())
    assert kinds["country"] >= 240 and kinds["continent"] == 7 and kinds["currency"] >= 140
    assert kinds["language"] >= 250 and kinds["city"] >= 600 and kinds["subregion"] >= 15
    # dissolved countries geonames still lists are left out
    assert G.find("Netherlands Antilles") is None and G.find("Serbia and Montenegro") is None


def test_every_edge_has_its_inverse_and_the_declared_kinds():
    for kind, rels in data.RELATIONS.items():
        for rel, (target, inverse) in rels.items():
            assert data.RELATIONS[target][inverse][0] == kind, (kind, rel)
    n = 0
    for e, rels in G.edges.items():
        for rel, neighbours in rels.items():
            target, inverse = data.RELATIONS[G.kind[e]][rel]
            assert neighbours, (e, rel)  # a relation with no neighbours is absent
            for x in neighbours:
                assert G.kind[x] == target and e in G.neighbors(x, inverse), (e, rel, x)
                n += 1
    assert n > 5000
    assert all(G.neighbors(c, "borders") for c in G.neighbors("France", "borders"))  # symmetric borders


def test_names_are_unique_and_clashes_disambiguated():
    assert len({data.norm(n) for n in G.kind}) == len(G.kind)
    assert G.kind["Singapore"] == "country" and G.neighbors("Singapore", "capital") == {"Singapore (city)"}
    assert G.kind["Antarctica"] == "country" and G.kind["Antarctica (continent)"] == "continent"
    assert G.neighbors("Jamaica", "capital") == {"Kingston (Jamaica)"}
    assert G.neighbors("Norfolk Island", "capital") == {"Kingston (Norfolk Island)"}
    assert G.find("  fRANCE ") == "France" and G.find("Atlantis") is None
    assert G.split_key("Paris") == "country:FR" == G.split_key("France")
    assert G.split_key("Euro") == "currency:EUR" and G.split_key("Europe") is None


def test_every_entity_name_can_be_written_in_a_tool_call():
    for name in G.kind:
        for written in (name, f'"{name}"', name.upper()):
            call = tools.parse(f"get_neighbors({written}, {G.relations(name)[0]})")
            assert G.find(call.args[0]) == name and call.args[1] == G.relations(name)[0]


def test_graph_build_is_deterministic():
    again = data.build()
    assert again.kind == G.kind and again.edges == G.edges and again.key == G.key


# --------------------------------------------------------------------------------------------------------------
# Tasks


def test_task_counts_templates_and_payloads():
    train, test = D.tasks("train"), D.tasks("test")
    assert 300 <= len(train) <= 600 and 100 <= len(test) <= 200
    for split, ts in (("train", train), ("test", test)):
        assert [t.id for t in ts] == [f"kg-{split}-{i:05d}" for i in range(len(ts))]
        assert all(t.env == D.id == "kg-v1" and t.split == split for t in ts)
        assert len(Counter(t.payload["template"] for t in ts)) == len(TEMPLATES) >= 10
        assert {t.payload["kind"] for t in ts} == {"set", "count"}
        assert {len(t.payload["plan"]) for t in ts} == {2, 3, 4}
        assert [Task.model_validate_json(t.model_dump_json()) for t in ts] == ts
    for t in train + test:
        p = t.payload
        assert p["entities"] and all(e in t.instruction and e in G.kind for e in p["entities"])
        if p["kind"] == "count":
            assert isinstance(p["answer"], int) and p["answer"] >= 1
        else:
            assert 1 <= len(p["answer"]) <= tasks.MAX_ANSWER and p["answer"] == sorted(set(p["answer"]))


def test_gold_answers_are_what_the_plans_compute_with_the_tools():
    for t in D.tasks("train") + D.tasks("test"):
        session = tools.Session(G)
        for step in t.payload["plan"]:
            session.run(tools.parse(step["action"]))
        assert grading.as_json(session.variables[-1]) == t.payload["answer"], t.id


def test_tasks_are_deterministic_across_processes():
    fresh = tasks.derive(data.build(), D.id)
    assert fresh["train"] == D.tasks("train") and fresh["test"] == D.tasks("test")
    with pytest.raises(ValueError):
        D.tasks("dev")  # type: ignore[arg-type]
    code = ("import hashlib, json; from agenttuning.envs.kg import definition; d = definition(); "
            "print(hashlib.sha256(json.dumps([t.model_dump() for s in ('train', 'test') for t in d.tasks(s)])"
            ".encode()).hexdigest())")
    mine = hashlib.sha256(json.dumps([t.model_dump() for s in ("train", "test") for t in D.tasks(s)]).encode())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == mine.hexdigest()


def test_splits_share_no_ids_questions_or_entities():
    train, test = D.tasks("train"), D.tasks("test")
    assert not {t.id for t in train} & {t.id for t in test}
    train_text = {normalise_text(t.instruction) for t in train}
    test_text = {normalise_text(t.instruction) for t in test}
    assert not train_text & test_text
    assert len(train_text) == len(train) and len(test_text) == len(test)

    def keys(ts: list[Task]) -> set[str]:
        return {k for t in ts for e in t.payload["entities"] if (k := G.split_key(e)) is not None}

    assert not keys(train) & keys(test)
    assert normalise_text(_EXAMPLE_QUESTION) not in train_text | test_text


# --------------------------------------------------------------------------------------------------------------
# Tools


def test_get_relations_lists_relations_and_makes_no_variable():
    assert observe("get_relations(France)") == (
        "France (a country) has these relations: borders, capital, continent, currency, languages, major_cities, "
        "subregion")
    assert observe("get_relations(Lima)") == "Lima (a city) has these relations: capital_of, country"
    results = play(["get_relations(Euro)", "get_neighbors(Japan, capital)", "get_relations(#0)"])
    assert results[0].observation == "Euro (a currency) has these relations: used_in"
    assert results[1].observation == "#0 = 1 city: Tokyo"  # get_relations created no variable
    assert results[2].observation == "#0 (cities) has these relations: capital_of, country"
    assert all(r.reward == 0 and not r.terminated and not r.invalid for r in results)


def test_get_neighbors_from_entities_and_variables():
    results = play(["get_neighbors(Belgium, languages)", "get_neighbors(#0, spoken_in)",
                    "get_neighbors(Peru, borders)", "get_neighbors(#2, capital)"])
    assert results[0].observation == "#0 = 3 languages: Dutch; French; German"
    spoken = G.neighbors("Dutch", "spoken_in") | G.neighbors("French", "spoken_in") | G.neighbors("German",
                                                                                                 "spoken_in")
    assert results[1].observation.startswith(f"#1 = {len(spoken)} countries: ")  # the union over #0's members
    peru = sorted(G.neighbors("Peru", "borders"))
    assert results[2].observation == f"#2 = {len(peru)} countries: " + "; ".join(peru)
    capitals = sorted(c for p in peru for c in G.neighbors(p, "capital"))
    assert results[3].observation == f"#3 = {len(capitals)} cities: " + "; ".join(capitals)
    assert results[3].info == {"tool": "get_neighbors"}
    # tolerant forms: any case, spaces, quotes, markdown, the British spelling, a trailing period
    assert observe('`get_neighbours( "japan" , Capital )`.') == "#0 = 1 city: Tokyo"


def test_large_results_show_a_bounded_preview():
    europe = sorted(G.neighbors("Europe", "countries"))
    text = observe("get_neighbors(Europe, countries)")
    assert text == (f"#0 = {len(europe)} countries: " + "; ".join(europe[:tools.MAX_PREVIEW])
                    + f"; ... ({len(europe) - tools.MAX_PREVIEW} more)")


def test_intersection_and_count():
    results = play(["get_neighbors(France, borders)", "get_neighbors(Germany, borders)", "intersection(#0, #1)",
                    "count(#2)", "intersection(#2, #2)"])
    both = sorted(G.neighbors("France", "borders") & G.neighbors("Germany", "borders"))
    assert both == ["Belgium", "Luxembourg", "Switzerland"]
    assert results[2].observation == "#2 = 3 countries: Belgium; Luxembourg; Switzerland"
    assert results[3].observation == "#3 = 3 (a number)"
    assert results[4].observation.startswith("#4 = 3 countries")
    disjoint = play(["get_neighbors(Peru, borders)", "get_neighbors(Japan, continent)", "get_neighbors(#1, countries)",
                     "intersection(#0, #2)"])
    assert disjoint[-1].observation == "#3 = 0 countries (empty)"


@pytest.mark.parametrize(("actions", "reason"), [
    (["", ], "expected one tool call"),
    (["definitely not an action"], "expected one tool call"),
    (["\x00\n```"], "expected one tool call"),
    (["lookup(France)"], "unknown tool 'lookup'; the tools are get_relations, get_neighbors, intersection, count"),
    (["get_neighbors(Frnace, borders)"], "unknown entity 'Frnace' (did you mean: France?)"),
    (["get_relations(Atlantis)"], "unknown entity 'Atlantis'; use a name exactly as the question lists it"),
    (["get_neighbors(France borders)"], "get_neighbors takes two arguments"),
    (["get_neighbors(France, border)"], "France (a country) has no relation 'border'; its relations are: borders,"),
    (["get_neighbors(Lima, capital)"], "(a city) has no relation 'capital'; its relations are: capital_of, country"),
    (["get_relations(#0)"], "variable #0 is not defined (defined: none yet)"),
    (["get_neighbors(France, borders)", "count(#4)"], "variable #4 is not defined (defined: #0)"),
    (["intersection(#0)"], "intersection takes two variables"),
    (["get_neighbors(France, borders)", "intersection(#0, Germany)"], "intersection takes two variables such as"),
    (["get_neighbors(France, borders)", "get_neighbors(France, capital)", "intersection(#0, #1)"],
     "cannot intersect countries (#0) with cities (#1)"),
    (["count(France)"], "count takes a variable such as #0"),
    (["get_neighbors(France, borders)", "count(#0)", "get_neighbors(#1, borders)"], "#1 is a number"),
    (["get_neighbors(France, borders)", "count(#0)", "count(#1)"], "#1 is a number"),
    (["Final Answer: Paris"], "the final answer must be the variable that holds the answer"),
    (["Final Answer:"], "the final answer must be the variable"),
    (["Final Answer: #0"], "variable #0 is not defined"),
    (["get_relations(" + "x" * 3000 + ")"], "longer than 2000 characters"),
])
def test_invalid_actions_get_helpful_feedback_and_the_episode_goes_on(actions, reason):
    with D.make() as env:
        env.reset(make_task())
        results = [env.step(a) for a in actions]
        r = results[-1]
        assert r.invalid is True and reason in r.info["reason"], r.observation
        assert r.observation == D.invalid_action(r.info["reason"]) and reason in r.observation
        assert r.reward == 0 and not r.terminated and not r.truncated
        # the episode goes on, and the invalid action defined no variable
        n_vars = sum(1 for x in results if re.match(r"#\d+ = ", x.observation))
        assert env.step("get_neighbors(Japan, capital)").observation == f"#{n_vars} = 1 city: Tokyo"


def test_final_answer_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    for text in (f"__import__('pathlib').Path({str(marker)!r}).touch()", f"#0; open({str(marker)!r}, 'w')"):
        r = play([f"Final Answer: {text}"])[-1]
        assert r.invalid and not r.terminated
    r = play([f"get_relations(__import__('pathlib').Path({str(marker)!r}).touch())"])[-1]
    assert r.invalid
    assert not marker.exists()


def test_episode_truncates_at_max_turns_and_refuses_steps_after_the_end():
    with D.make() as env:
        env.reset(make_task())
        results = [env.step("get_relations(France)") for _ in range(D.max_turns)]
        assert [r.truncated for r in results] == [False] * (D.max_turns - 1) + [True]
        assert results[-1].reward == 0 and not results[-1].terminated and results[-1].success is False
        with pytest.raises(RuntimeError):
            env.step("get_relations(France)")
        env.reset(make_task())  # a reset starts over, with no variables
        assert env.step("Final Answer: #0").invalid
    with D.make() as env, pytest.raises(ValueError):
        env.reset(make_task().model_copy(update={"env": "other-v1"}))


def test_concurrent_episodes_keep_their_own_variables():
    errors: list[str] = []

    def worker(i: int) -> None:
        country = sorted(G.neighbors("Europe", "countries"))[i]
        for _ in range(20):
            with D.make() as env:
                env.reset(make_task())
                first = env.step(f"get_neighbors({country}, capital)").observation
                if not first.startswith("#0 = 1 city: "):
                    errors.append(first)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --------------------------------------------------------------------------------------------------------------
# Grading


def test_f1_and_scores():
    assert grading.f1({"a"}, {"a"}) == 1.0 and grading.f1(set(), {"a"}) == 0.0 and grading.f1({"a"}, set()) == 0.0
    assert grading.f1({"a", "b"}, {"a"}) == pytest.approx(2 / 3)
    assert grading.f1({"a", "b", "c", "d"}, {"a", "b"}) == pytest.approx(2 / 3)
    s = tools.EntitySet
    gold = ["French", "German"]
    assert grading.score(s("language", frozenset(gold)), "set", gold) == (1.0, True)
    assert grading.score(tools.Number(2), "set", gold) == (0.0, False)  # a number for a set question
    assert grading.score(tools.Number(3), "count", 3) == (1.0, True)
    assert grading.score(tools.Number(4), "count", 3) == (0.0, False)
    assert grading.score(s("country", frozenset({"a", "b", "c"})), "count", 3) == (0.0, False)  # right size, a set


def test_answers_in_episodes_exact_partial_and_wrong():
    exact = play(["get_neighbors(Belgium, languages)", "get_neighbors(Switzerland, languages)",
                  "intersection(#0, #1)", "Final Answer: #2"])[-1]
    assert exact.terminated and exact.reward == 1.0 and exact.success is True
    assert exact.info == {"answer": ["French", "German"]}
    assert exact.observation == "Answer received; the task is over."
    superset = play(["get_neighbors(Belgium, languages)", "Answer\nFinal Answer: #0."])[-1]
    assert superset.terminated and superset.reward == pytest.approx(0.8) and superset.success is False
    wrong_kind = play(["get_neighbors(Belgium, capital)", "Final Answer: #0"])[-1]
    assert wrong_kind.terminated and wrong_kind.reward == 0.0
    counted = play(["get_neighbors(France, borders)", "get_neighbors(Germany, borders)", "intersection(#0, #1)",
                    "count(#2)", "Final Answer: #3"], make_task("count", 3))[-1]
    assert counted.reward == 1.0 and counted.info["answer"] == 3
    assert play(["Final Answer: 3"], make_task("count", 3))[-1].reward == 1.0  # a number written directly
    assert play(["Final Answer: 2"], make_task("count", 3))[-1].reward == 0.0


def test_wrong_answer_scores_zero_on_every_task():
    for task in D.tasks("test") + D.tasks("train"):
        (r,) = play([parse_reply(D.wrong_answer(task)).action], task)
        assert r.terminated and r.reward == 0.0 and r.success is False, task.id


# --------------------------------------------------------------------------------------------------------------
# The environment proves its own tasks: the expert through the real rollout engine


def test_expert_solves_every_test_task_through_the_rollout_engine(tmp_path):
    test = D.tasks("test")
    summary = rollout(D, test, ExpertPolicy(D), tmp_path / "kg.jsonl", concurrency=8)
    assert (summary.finished, summary.successes, summary.end_reasons) == (len(test), len(test), {"done": len(test)})
    for traj in read_records(tmp_path / "kg.jsonl", Trajectory):
        plan = traj.task.payload["plan"]
        assert traj.success and traj.reward == 1.0 and len(traj.steps) == len(plan) + 1
        assert [s.action for s in traj.steps] == [p["action"] for p in plan] + [f"Final Answer: #{len(plan) - 1}"]
        assert [s.thought for s in traj.steps[:-1]] == [p["thought"] for p in plan]
        assert all(s.reward == 0 and not s.parse_error for s in traj.steps[:-1])


def test_expert_solves_the_train_split_too():
    failures = []
    for task in D.tasks("train"):
        with D.make() as env:
            history = [Turn(role="user", content=env.reset(task))]
            for _ in range(D.max_turns):
                reply = D.expert(task, history)
                r = env.step(parse_reply(reply).action)
                history += [Turn(role="assistant", content=reply), Turn(role="user", content=r.observation)]
                if r.terminated or r.truncated:
                    break
            if r.reward != 1.0:
                failures.append(task.id)
    assert failures == []


def test_expert_final_thought_reports_what_it_saw():
    task = next(t for t in D.tasks("test") if t.payload["kind"] == "set" and len(t.payload["answer"]) == 1)
    reply = D.expert(task, [Turn(role="user", content="Question"),
                            *[Turn(role=r, content=f"#{i} = 1 x: y" if r == "user" else "a")
                              for i in range(len(task.payload["plan"])) for r in ("assistant", "user")]])
    k = len(task.payload["plan"]) - 1
    assert reply == (f"Thought: #{k} holds {task.payload['answer'][0]}, which answers the question.\n"
                     f"Action: Final Answer: #{k}")


def test_cli_expert_rollout_reaches_full_success(tmp_path):
    from agenttuning.cli import app

    out = tmp_path / "kg.jsonl"
    r = CliRunner().invoke(app, ["rollout", "--env", "kg", "--split", "test", "--policy", "expert", "--out",
                                 str(out), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    trajs = read_records(out, Trajectory)
    assert len(trajs) == len(D.tasks("test")) and all(t.success and t.task.env == "kg-v1" for t in trajs)
    assert "100.0%" in r.output


# --------------------------------------------------------------------------------------------------------------
# Prompts and registration


def test_prompt_documents_every_tool_and_relation_and_stays_short():
    prompt = D.system_prompt
    for tool in tools.TOOLS:
        assert f"- {tool}(" in prompt
    for kind, rels in data.RELATIONS.items():
        for rel in rels:
            assert rel in prompt, (kind, rel)
    assert "Final Answer: #k" in prompt and f"at most {D.max_turns} turns" in prompt
    assert len(prompt) < 1600 and sum(len(t.content) for t in D.context()) < 2400


def test_one_shot_example_is_a_real_episode():
    context = D.context()
    assert [t.role for t in context] == ["user", "assistant"] * 5
    assert all(t.loss is False for t in context if t.role == "assistant")
    example = make_task(answer=("French", "German"), entities=_EXAMPLE_ENTITIES)
    example = example.model_copy(update={"instruction": _EXAMPLE_QUESTION})
    with D.make() as env:
        assert env.reset(example) == context[2].content
        for reply, observation in zip(context[3::2], [*context[4::2], None], strict=True):
            r = env.step(parse_reply(reply.content).action)
            if observation is not None:
                assert r.observation == observation.content
        assert r.terminated and r.reward == 1.0


def test_registered_under_its_versioned_id():
    assert base.get("kg") is D and base.get("kg-v1") is D and D in base.available()
    assert D.held_out is False and 8 <= D.max_turns <= 10
    with pytest.raises(KeyError):
        base.get("kg-v2")
