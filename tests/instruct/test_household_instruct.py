"""Self-instruct for ``household`` (issue 14, item 2): a teacher writes games as specs; a game is kept only if
TextWorld builds it and its walkthrough wins it in the real engine.

A real loopback OpenAI-compatible server plays the teacher with a fixed mix: good games, a broken reply, a broken
item, a too-big spec, inconsistent references, an unreachable goal, a goal already met at the start, a walkthrough
that does not win, a duplicate within the batch, a duplicate of a kept game (same world, other wording and order),
and more items than asked for. Everything runs for real: the HTTP server, the OpenAI client, TextWorld's GameMaker
and compiler (in a child process), and episodes of the household environment. Three small games are compiled
(a few seconds each here) into one cache shared by the module's tests.
"""

from __future__ import annotations

import copy
import hashlib
import json
from itertools import count

import pytest

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.envs.household import definition, games
from agenttuning.envs.household.games import SpecPayload, ensure_game
from agenttuning.envs.household.instruct import HouseholdDraft, Rejected, draft_task, read_drafts, solution_key
from agenttuning.envs.household.spec import WorldSpec, spec_problem
from agenttuning.jsonl import read_records
from agenttuning.schema import Task
from agenttuning.stages.instruct import InstructConfig, run
from tests.openai_server import FakeOpenAIServer

needs_textworld = pytest.mark.skipif(games.unavailable_reason() is not None, reason=str(games.unavailable_reason()))

# two rooms, a locked chest whose key is in the start room, a food inside it
CHEST = {
    "instruction": "Put the blue cup in the iron chest in the cellar, then eat the yellow pear you find there.",
    "rooms": [{"name": "pantry", "exits": {"east": "cellar"}}, {"name": "cellar", "exits": {}}],
    "start": "pantry",
    "objects": [
        {"name": "pine shelf", "type": "supporter", "location": "pantry"},
        {"name": "blue cup", "type": "object", "location": "pine shelf"},
        {"name": "silver key", "type": "key", "location": "pantry"},
        {"name": "iron chest", "type": "container", "location": "cellar", "state": "locked", "key": "silver key"},
        {"name": "yellow pear", "type": "food", "location": "iron chest"},
    ],
    "goal": [{"relation": "in", "object": "blue cup", "target": "iron chest"},
             {"relation": "eaten", "object": "yellow pear"}],
    "walkthrough": ["take silver key", "take blue cup from pine shelf", "go east", "unlock iron chest with silver key",
                    "open iron chest", "take yellow pear from iron chest", "eat yellow pear",
                    "insert blue cup into iron chest"],
}
# one room: take a book from a desk and put it on a shelf
SHELF = {
    "instruction": "Move the green book from the desk onto the tall shelf.",
    "rooms": [{"name": "study", "exits": {}}],
    "start": "study",
    "objects": [{"name": "oak desk", "type": "supporter", "location": "study"},
                {"name": "tall shelf", "type": "supporter", "location": "study"},
                {"name": "green book", "type": "object", "location": "oak desk"}],
    "goal": [{"relation": "on", "object": "green book", "target": "tall shelf"}],
    "walkthrough": ["take green book from oak desk", "put green book on tall shelf", "look"],  # wins a command early
}
# one room, one command: eat what you carry
SNACK = {
    "instruction": "You are hungry: eat the red plum you are carrying.",
    "rooms": [{"name": "porch", "exits": {}}],
    "start": "porch",
    "objects": [{"name": "red plum", "type": "food", "location": "inventory"}],
    "goal": [{"relation": "eaten", "object": "red plum"}],
    "walkthrough": ["eat red plum"],
}


def _variant(base: dict, **changes) -> dict:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def _replies() -> list[str]:
    first = [
        CHEST,
        SHELF,
        {k: v for k, v in SHELF.items() if k != "walkthrough"},  # unparsable: no walkthrough
        _variant(SHELF, rooms=[{"name": f"room {w}", "exits": {}} for w in "abcdefg"], start="room a"),  # too_long
        _variant(SHELF, objects=[*SHELF["objects"][:2], {"name": "green book", "type": "object",
                                                         "location": "garage"}]),  # inconsistent: no garage
        _variant(SHELF, instruction="Fetch the green book from the attic.",
                 rooms=[{"name": "study", "exits": {}}, {"name": "attic", "exits": {}}],  # no way to the attic
                 objects=[*SHELF["objects"][:2], {"name": "green book", "type": "object", "location": "attic"}],
                 goal=[{"relation": "held", "object": "green book"}]),  # unreachable
        _variant(SHELF, instruction="Leave the green book on the tall shelf.",
                 objects=[*SHELF["objects"][:2], {"name": "green book", "type": "object",
                                                  "location": "tall shelf"}]),  # goal_already_met
        _variant(SHELF, instruction="Put the green book on the tall shelf, quickly.",
                 walkthrough=["put green book on tall shelf"]),  # walkthrough_fails: not holding it
        copy.deepcopy(SHELF),  # duplicate within the batch (same instruction)
        _variant(CHEST, instruction="Eat the yellow pear locked in the cellar's iron chest and leave the blue cup "
                                    "inside the chest."),  # duplicate of a kept game: same world, other wording
    ]
    third = [SNACK, CHEST, SHELF]  # 3 items where 2 were asked for: the third is excess
    return [json.dumps(first), "Sure! Here are your games: [{oops", "```json\n" + json.dumps(third) + "\n```"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One game cache for the module (the registered family reads $AGENTTUNING_CACHE), so each game compiles once."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("AGENTTUNING_CACHE", str(root))
    yield root / "household"
    mp.undo()


@pytest.fixture(scope="module")
def test_index() -> ContaminationIndex:
    return ContaminationIndex.build(definition().tasks("test"))


@needs_textworld
def test_exactly_the_good_games_are_kept_and_each_rejection_is_counted(tmp_path, cache, test_index):
    replies, n = _replies(), count()
    with FakeOpenAIServer(lambda messages: replies[next(n)]) as srv:
        config = InstructConfig(env="household", teacher="openai:teacher", base_url=srv.base_url, n=22,
                                per_request=10, concurrency=1, max_retries=0)
        out = run(config, tmp_path / "instruct", index=test_index)
        prompt = srv.requests[0].body["messages"][-1]["content"]

    d = definition()
    want = [draft_task(d, HouseholdDraft.model_validate(x)) for x in (CHEST, SHELF, SNACK)]
    kept = read_records(tmp_path / "instruct" / "tasks.jsonl", Task)
    assert all(isinstance(t, Task) for t in want) and kept == want
    assert all(t.id.startswith("household-instruct-") and t.env == "household-v1" and t.split == "train"
               for t in kept)
    assert out.rejected == {"excess": 1, "unparsable": 1, "too_long": 1, "inconsistent": 1, "unreachable": 1,
                            "goal_already_met": 1, "walkthrough_fails": 1, "duplicate": 3}
    assert out.rejected_replies == {"unparsable_reply": 1}
    assert (out.requests, out.asked, out.drafts, out.kept) == (3, 22, 13, 3)
    lines = [json.loads(x) for x in (tmp_path / "instruct" / "rejections.jsonl").read_text().splitlines()]
    by_reason = {r["reason"]: r["detail"] for r in lines}
    assert "garage" in by_reason["inconsistent"] and "attic" in by_reason["unreachable"]
    assert "rooms" in by_reason["too_long"] and "not available" in by_reason["walkthrough_fails"]
    # a game compiled once per world: the rejected variants reuse a kept game's, or fail before building
    assert len([p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 3
    # SHELF won a command before its end: the kept walkthrough stops at the win
    assert kept[1].payload["walkthrough"] == SHELF["walkthrough"][:2]
    # the teacher saw the format, the rules and the worked example
    assert '"walkthrough"' in prompt and "unlock X with K" in prompt and d.description in prompt


@needs_textworld
def test_a_kept_game_is_built_byte_identically_and_played_by_the_expert(cache, tmp_path):
    d = definition()
    task = draft_task(d, HouseholdDraft.model_validate(CHEST))
    assert isinstance(task, Task)
    payload = d.payload(task)
    assert isinstance(payload, SpecPayload)
    # the same spec, built in another cache by another child process: the same bytes
    first, second = ensure_game(payload), ensure_game(payload, tmp_path)
    for name in ("game.z8", "game.json", "game.ni"):
        a, b = (hashlib.sha256((p.parent / name).read_bytes()).hexdigest() for p in (first, second))
        assert a == b, name
    env = d.make()
    try:
        first_obs = env.reset(task)
        assert first_obs.startswith("This game is not a cooking game. Your task: Put the blue cup")
        assert "go east" in first_obs and "take silver key" in first_obs
        reply = d.expert(task, [])
        assert reply == "Thought: The task needs the silver key, so I take it.\nAction: take silver key"
        assert env.step("take silver key").reward == 0.0
        r = env.step("insert blue cup into iron chest")  # not available yet: invalid-action feedback
        assert r.invalid and not r.terminated
    finally:
        env.close()


def test_specs_are_checked_before_anything_is_built():
    def problem(**changes):
        return spec_problem(WorldSpec.model_validate({k: v for k, v in _variant(CHEST, **changes).items()
                                                      if k not in ("instruction", "walkthrough")}))

    assert problem() is None
    locked_in = [*CHEST["objects"][:2], {"name": "silver key", "type": "key", "location": "iron chest"},
                 *CHEST["objects"][3:]]
    assert problem(objects=locked_in)[0] == "unreachable"  # the key is locked inside its own chest
    clash = problem(rooms=[{"name": "pantry", "exits": {"east": "cellar"}},
                           {"name": "cellar", "exits": {"west": "hall"}},  # cellar's west is the way back to the pantry
                           {"name": "hall", "exits": {}}])
    assert clash[0] == "inconsistent" and "west" in clash[1]
    twice = problem(rooms=[{"name": "pantry", "exits": {"east": "cellar"}},
                           {"name": "cellar", "exits": {"north": "pantry"}}])
    assert twice[0] == "inconsistent" and "two exits" in twice[1]
    assert problem(goal=[{"relation": "eaten", "object": "blue cup"}])[0] == "inconsistent"  # not a food
    assert problem(goal=[{"relation": "at", "target": "pantry"}])[0] == "goal_already_met"
    dup = [*CHEST["objects"], {"name": "pantry", "type": "object", "location": "pantry"}]
    assert "duplicate" in problem(objects=dup)[1]
    # a name that is a command word or an Inform-unsafe string never gets through
    items, _ = read_drafts(json.dumps([_variant(SNACK, start='porch"; say "x')]), 1)
    assert isinstance(items[0], Rejected) and items[0].reason == "unparsable"
    with_north = _variant(SNACK, objects=[{"name": "north plum", "type": "food", "location": "inventory"}])
    made = draft_task(definition(), HouseholdDraft.model_validate(with_north))
    assert isinstance(made, Rejected) and made.reason == "inconsistent" and "reserved" in made.detail


def test_adversarial_replies_are_bounded_and_never_crash():
    assert read_drafts("[" * 60_000, 5)[1].reason == "unparsable_reply"
    assert read_drafts('{"rooms": []}', 5)[1].reason == "unparsable_reply"
    items, whole = read_drafts(json.dumps([_variant(SNACK, start=1), _variant(SNACK, extra=True),
                                           _variant(SNACK, walkthrough=["eat red plum; quit"]),
                                           _variant(SNACK, goal=[{"relation": "eaten", "object": "red plum"}] * 5)]),
                               5)
    assert whole is None and [i.reason for i in items] == ["unparsable", "unparsable", "unparsable", "too_long"]
    made = draft_task(definition(), HouseholdDraft.model_validate(_variant(SNACK, instruction="eat\x00")))
    assert isinstance(made, Rejected) and made.reason == "unparsable"


def test_solution_key_ignores_wording_order_and_walkthrough_and_never_builds_cooking_games(tmp_path):
    def key(draft: dict) -> str:
        world = HouseholdDraft.model_validate(draft).world()
        payload = SpecPayload(kind="spec", spec=world, walkthrough=draft["walkthrough"]).model_dump(mode="json")
        return solution_key(Task(id="x", env="household-v1", split="train", instruction=draft["instruction"],
                                 payload=payload))

    mirrored = _variant(CHEST, instruction="other words", walkthrough=["look"], objects=CHEST["objects"][::-1],
                        rooms=[{"name": "cellar", "exits": {"west": "pantry"}}, {"name": "pantry", "exits": {}}])
    assert key(CHEST) == key(mirrored) != key(SHELF)
    cooking = definition().tasks("test")[:3]
    assert len({solution_key(t) for t in cooking}) == 3 and all(solution_key(t).startswith("cooking:") for t in cooking)


@needs_textworld
def test_a_build_that_fails_is_a_rejection_not_a_crash(cache, monkeypatch):
    monkeypatch.setattr(games, "GENERATE_TIMEOUT_S", 0.01)  # fault injection: the compiler child cannot finish
    fresh = _variant(SNACK, objects=[{"name": "ripe fig", "type": "food", "location": "inventory"}],
                     goal=[{"relation": "eaten", "object": "ripe fig"}], walkthrough=["eat ripe fig"])
    made = draft_task(definition(), HouseholdDraft.model_validate(fresh))
    assert isinstance(made, Rejected) and made.reason == "build_failed" and "ran past" in made.detail
    key = SpecPayload(kind="spec", spec=HouseholdDraft.model_validate(fresh).world(), walkthrough=["x"]).key
    assert not (cache / key).exists()  # nothing half-built left where the next use would look


@needs_textworld
def test_the_command_keeps_games_that_rollout_then_plays_expert_wins_wrong_loses(tmp_path, cache):
    """`agenttuning instruct --env household` end to end (the default test index), then the kept games through
    `agenttuning rollout --tasks`: the expert wins each (reward 1), the wrong answer loses each (reward 0)."""
    from typer.testing import CliRunner

    from agenttuning.cli import app

    reply = json.dumps([SNACK, SHELF, _variant(SNACK, instruction="Eat the plum.", walkthrough=["eat plum pie"])])
    with FakeOpenAIServer(lambda messages: reply) as srv:
        r = CliRunner().invoke(app, ["instruct", "--env", "household", "--teacher", "openai:teacher", "--base-url",
                                     srv.base_url, "--api-key", "k", "-n", "3", "--per-request", "3",
                                     "--out", str(tmp_path / "i")])
    assert r.exit_code == 0, r.output
    assert "3 / 3 / 2" in r.output and "walkthrough_fails" in r.output
    for policy, reward in (("expert", 1.0), ("wrong", 0.0)):
        r = CliRunner().invoke(app, ["rollout", "--env", "household", "--tasks", str(tmp_path / "i" / "tasks.jsonl"),
                                     "--policy", policy, "--out", str(tmp_path / f"{policy}.jsonl"), "--no-progress"])
        assert r.exit_code == 0, r.output
        trajs = [json.loads(x) for x in (tmp_path / f"{policy}.jsonl").read_text().splitlines()]
        assert len(trajs) == 2 and all(t["reward"] == reward for t in trajs), [t.get("reward") for t in trajs]
        assert all(t["success"] is (reward == 1.0) for t in trajs)
