"""``alfworld`` episodes through ALFWorld's real engine (TextWorld's PDDL environment, Fast Downward, ALFWorld's
demangler), on games of our own built from the domain and grammar the alfworld wheel ships (see
:mod:`tests.envs.alfworld.layout`): the expert wins all six task types, a wrong answer scores 0, an unavailable
command is "Nothing happens." and never reaches the game, and the family passes the conformance checker.

Needs the ``alfworld`` extra (alfworld, fast-downward-textworld); without it these tests are skipped, with the
family's own reason."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from agenttuning.envs.alfworld import AlfworldDefinition, engine
from agenttuning.envs.alfworld.env import GIVE_UP, MAX_COMMAND_CHARS
from agenttuning.rollout.conformance import check_env
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Turn
from tests.envs.alfworld.layout import GOALS, add_game, standard_folder

pytestmark = pytest.mark.skipif(engine.unavailable_reason() is not None,
                                reason=f"ALFWorld's engine cannot run here: {engine.unavailable_reason()}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return standard_folder(tmp_path_factory.mktemp("alfworld"))


@pytest.fixture(scope="module")
def definition(folder) -> AlfworldDefinition:
    return AlfworldDefinition(data_path=folder)


def play(d: AlfworldDefinition, task, policy) -> tuple[list[Turn], object]:
    env = d.make()
    try:
        history = [Turn(role="user", content=env.reset(task))]
        while True:
            reply = policy(task, history)
            result = env.step(parse_reply(reply).action)
            history += [Turn(role="assistant", content=reply), Turn(role="user", content=result.observation)]
            if result.terminated or result.truncated:
                return history, result
    finally:
        env.close()


def test_the_expert_wins_every_one_of_alfworlds_six_task_types(tmp_path):
    root = tmp_path / "six"
    for i, task_type in enumerate(GOALS):  # every type in the test split; the train split needs one game too
        add_game(root / "json_2.1.1", "valid_unseen", task_type, "Obj-None-Recep-1", f"trial_{i}")
    add_game(root / "json_2.1.1", "train", "pick_and_place_simple", "Apple-None-Fridge-1", "trial_train")
    d = AlfworldDefinition(data_path=root)
    tasks = d.tasks("test")
    assert sorted(t.payload["task_type"] for t in tasks) == sorted(GOALS)
    for task in tasks:
        history, result = play(d, task, d.expert)
        assert result.reward == 1.0 and result.success is True, (task.id, history[-1].content)
        steps = d.walkthrough(task)  # the game files hold no walkthrough: this is Fast Downward's plan
        assert len(history) == 1 + 2 * len(steps)
    cool = next(t for t in tasks if t.payload["task_type"] == "pick_cool_then_place_in_recep")
    assert d.walkthrough(cool) == ["go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1",
                                   "cool apple 1 with fridge 1", "go to diningtable 1",
                                   "move apple 1 to diningtable 1"]


def test_the_walkthrough_recorded_in_the_game_file_is_the_experts(tmp_path):
    recorded = ["look", "go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1", "open fridge 1",
                "move apple 1 to fridge 1"]
    for folder in ("train", "valid_unseen"):
        add_game(tmp_path / "json_2.1.1", folder, "pick_and_place_simple", "Apple-None-Fridge-1", "trial_W",
                 walkthrough=recorded)
    d = AlfworldDefinition(data_path=tmp_path)
    task = d.tasks("test")[0]
    assert d.walkthrough(task) == recorded
    history, result = play(d, task, d.expert)
    assert result.success is True and history[1].content.endswith("Action: look")


def test_the_first_observation_is_alfworlds_without_the_banner(definition):
    task = next(t for t in definition.tasks("test") if t.payload["task_type"] == "pick_cool_then_place_in_recep")
    env = definition.make()
    try:
        first = env.reset(task)
    finally:
        env.close()
    assert first.startswith("You are in the middle of a room. Looking quickly around you, you see a countertop 1, ")
    assert "sinkbasin 1" in first and "Welcome to TextWorld" not in first
    assert "\n\nYour task is to: put a cool apple in diningtable.\n\nAVAILABLE COMMANDS: go to countertop 1, " in first


def test_a_wrong_answer_and_running_out_of_turns_score_0(definition):
    task = definition.tasks("test")[0]
    _, result = play(definition, task, lambda t, h: definition.wrong_answer(t))
    assert result.terminated and result.reward == 0.0 and result.success is False
    _, result = play(definition, task, lambda t, h: "Thought: I keep looking.\nAction: look")
    assert result.truncated and result.reward == 0.0 and result.success is False


def test_unavailable_commands_are_nothing_happens_and_use_a_turn(definition):
    task = next(t for t in definition.tasks("test") if t.payload["task_type"] == "pick_cool_then_place_in_recep")
    env = definition.make()
    try:
        env.reset(task)
        for action in ("take apple 1 from countertop 1", "x" * (MAX_COMMAND_CHARS + 1), "fly away", "\x00"):
            r = env.step(action)
            assert r.invalid and not r.terminated and r.observation.startswith("Nothing happens. (")
        assert env.turns == 4
        r = env.step("Go to CounterTop 1.")  # compared lower-cased, spaces collapsed, a final period dropped
        assert not r.invalid and r.observation.startswith("You arrive at countertop 1. On the countertop 1, you see")
        assert env.step("take apple 1 from countertop 1").observation.startswith("You pick up the apple 1")
        env.step("go to diningtable 1")
        r = env.step("put apple 1 in/on diningtable 1")  # the older spelling of "move apple 1 to diningtable 1"
        assert not r.invalid and r.observation.startswith("You move the apple 1 to the diningtable 1.")
        assert not r.terminated  # the apple is not cool: not won
        assert env.step(GIVE_UP).reward == 0.0
    finally:
        env.close()


def test_concurrent_episodes_on_threads_each_win(definition):
    """Each game has its own copy of Fast Downward's planner state; episodes on threads do not disturb each other
    (and closing games on one thread while another loads is safe: the copies are pooled, never unloaded)."""
    tasks = definition.tasks("test") * 2
    results: list[float] = []
    argv = list(sys.argv)  # Fast Downward's translator rewrites sys.argv: the engine puts it back

    def run(task):
        results.append(float(play(definition, task, definition.expert)[1].reward))

    threads = [threading.Thread(target=run, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [1.0] * len(tasks)
    assert sys.argv == argv


def test_the_family_passes_the_conformance_checker_on_a_data_folder(definition):
    report = check_env(definition, max_tasks=1)
    assert report.passed, [(r.name, r.detail) for r in report.failures()]
    assert len(report.results) == 10


@pytest.mark.slow
def test_the_conformance_checker_on_every_test_game(definition):
    report = check_env(definition)
    assert report.passed, [(r.name, r.detail) for r in report.failures()]


def test_a_game_file_changed_under_the_loader_is_refused_at_reset(tmp_path):
    """The episode re-reads the game file bounded and checked, as the scan did (a file can change after a scan)."""
    game_dir = add_game(tmp_path / "json_2.1.1", "valid_unseen", "pick_and_place_simple", "A-None-F-1", "trial_X")
    add_game(tmp_path / "json_2.1.1", "train", "pick_and_place_simple", "A-None-F-1", "trial_Y")
    d = AlfworldDefinition(data_path=tmp_path)
    task = d.tasks("test")[0]
    (game_dir / "game.tw-pddl").write_text(json.dumps({"grammar": "x"}))
    env = d.make()
    with pytest.raises(ValueError, match="not a game.tw-pddl file: no pddl_domain, pddl_problem"):
        env.reset(task)
    env.close()
