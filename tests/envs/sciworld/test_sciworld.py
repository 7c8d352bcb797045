"""The ``sciworld`` family on the real ScienceWorld simulator (a JVM per episode from the pool; no test doubles)."""

from __future__ import annotations

import threading
import time

import pytest

from agenttuning.envs.base import get
from agenttuning.envs.sciworld import jvm
from agenttuning.envs.sciworld.definition import thought_for
from agenttuning.envs.sciworld.env import MAX_COMMAND_CHARS, normalise_command
from agenttuning.envs.sciworld.tasks import GOLD_LIMIT, TASK_TYPES
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Turn

definition = get("sciworld")
pytestmark = pytest.mark.skipif(definition.unavailable_reason() is not None,
                                reason=f"sciworld cannot run here: {definition.unavailable_reason()}")


def play(env, task, replies):
    """Reset ``env`` to ``task`` and send each reply's action until the episode ends; the results."""
    env.reset(task)
    results = []
    for reply in replies:
        results.append(env.step(parse_reply(reply).action))
        if results[-1].terminated or results[-1].truncated:
            break
    return results


def play_expert(task):
    env = definition.make()
    try:
        history = [Turn(role="user", content=env.reset(task))]
        results = []
        for _ in range(definition.max_turns):
            reply = definition.expert(task, history)
            r = env.step(parse_reply(reply).action)
            results.append(r)
            history += [Turn(role="assistant", content=reply), Turn(role="user", content=r.observation)]
            if r.terminated or r.truncated:
                break
        return results
    finally:
        env.close()


def test_tasks_come_from_scienceworlds_own_splits_and_are_deterministic():
    train, test = definition.tasks("train"), definition.tasks("test")
    assert train == definition.tasks("train") and test == definition.tasks("test")
    sim = jvm.acquire()
    try:
        for split, ts in (("train", train), ("test", test)):
            for t in ts[:: max(1, len(ts) // 8)]:  # a spread of them: each variation is in ScienceWorld's own list
                p = definition.payload(t)
                assert p.task_name in TASK_TYPES
                sim.load(p.task_name, 0)
                assert p.variation in sim.variations(split)
    finally:
        jvm.release(sim)
    assert all(definition.payload(t).gold_steps <= GOLD_LIMIT for t in test)
    assert {definition.payload(t).task_name for t in test} == set(TASK_TYPES)
    pairs = {(definition.payload(t).task_name, definition.payload(t).variation) for t in train}
    assert not pairs & {(definition.payload(t).task_name, definition.payload(t).variation) for t in test}


@pytest.mark.parametrize("task_name", ["chemistry-mix", "find-animal", "lifespan-longest-lived"])
def test_expert_wins_a_test_task(task_name):
    task = next(t for t in definition.tasks("test") if definition.payload(t).task_name == task_name)
    results = play_expert(task)
    assert results[-1].terminated and results[-1].success is True
    assert sum(r.reward for r in results) == 1.0  # the rewards add up to the final score / 100


def test_giving_up_and_a_wrong_focus_score_zero():
    task = definition.tasks("test")[0]
    env = definition.make()
    try:
        (r,) = play(env, task, [definition.wrong_answer(task)])
        assert r.terminated and r.success is False and r.reward == 0
        # ScienceWorld's own failure: focusing on an object the task is not about ends it, score clipped to 0
        env.reset(task)
        gained = [env.step(a) for a in definition.gold_path(task)[:4]]
        r = env.step("focus on agent")
        assert r.terminated and r.success is False and r.info["score"] < 0
        assert sum(x.reward for x in gained) + r.reward == 0
    finally:
        env.close()


def test_invalid_actions_get_feedback_and_use_a_turn():
    task = definition.tasks("test")[0]
    env = definition.make()
    try:
        first = env.reset(task)
        assert first.startswith("Your task is")  # ScienceWorld's description, then the room
        r = env.step("fly to the moon")
        assert r.invalid and not r.terminated and r.reward == 0
        assert "not a ScienceWorld command" in r.observation and "focus on OBJ" in r.observation
        r = env.step("x" * (MAX_COMMAND_CHARS + 1))
        assert r.invalid and "longer than" in r.info["reason"]
        r = env.step("look \x00 around")
        assert r.invalid and "printable ASCII" in r.info["reason"]
        assert env.turns == 3
        assert env.step("look around").observation.startswith("This room is called")  # the episode goes on
    finally:
        env.close()


def test_budget_truncates():
    task = definition.tasks("test")[0]
    env = definition.make()
    try:
        results = play(env, task, ["Action: wait1"] * definition.max_turns)
        assert len(results) == definition.max_turns and results[-1].truncated and results[-1].reward == 0
    finally:
        env.close()


def test_adversarial_actions_are_feedback_and_leave_the_game_usable():
    task = definition.tasks("test")[0]
    env = definition.make()
    try:
        first = env.reset(task)
        for action in definition.adversarial_actions(task):
            t0 = time.perf_counter()
            r = env.step(action)
            assert time.perf_counter() - t0 < 5 and len(r.observation) <= 4000
            if r.terminated or r.truncated:
                assert env.reset(task) == first
        assert env.reset(task) == first
    finally:
        env.close()


def test_close_returns_the_jvm_to_the_pool_and_a_killed_one_is_not_reused():
    task = definition.tasks("test")[0]
    jvm.shutdown()
    before, _ = jvm.pool_size()
    env = definition.make()
    env.reset(task)
    sim = env._sim
    assert jvm.pool_size() == (before + 1, 0)
    env.close()
    env.close()
    assert jvm.pool_size() == (before + 1, 1) and sim.alive  # idle, kept for the next episode
    jvm.shutdown()
    assert jvm.pool_size() == (before, 0) and not sim.alive and sim.process.poll() is not None


def test_interrupt_makes_a_running_step_return():
    task = definition.tasks("test")[0]
    env = definition.make()
    env.reset(task)
    sim = env._sim
    started = threading.Event()
    slow_step = sim.step

    def step_that_blocks(command):  # fault injection: a step that would not return on its own
        started.set()
        sim._call("step", "wait")  # a real call first, then a wait on the JVM that only a kill ends
        sim.process.wait()
        return slow_step(command)

    sim.step = step_that_blocks
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", env.step("look around")))
    thread.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    env.close()  # from another thread: interrupts, waits for the step, then releases
    thread.join(10)
    assert not thread.is_alive() and time.perf_counter() - t0 < 10
    assert out["r"].terminated and out["r"].info.get("interrupted") is True
    assert sim.process.poll() is not None  # the JVM is gone, and the pool forgot it
    assert env.reset(task)  # the next episode gets a working JVM
    env.close()


def test_parsing_helpers():
    assert normalise_command("  Focus ON   red wire.\nthen more") == "focus on red wire"
    assert thought_for("focus on red wire") == "The task is about the red wire; I focus on it."
    assert thought_for("move wood block to blue box").startswith("The wood block belongs in the blue box")
