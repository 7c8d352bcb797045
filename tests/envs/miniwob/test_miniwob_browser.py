"""The miniwob family in a real headless Chromium: the expert wins, wrong answers score 0, invalid actions get
feedback, interrupt works, and no browser process outlives the pool."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from agenttuning.envs.miniwob import browser, definition
from agenttuning.envs.miniwob.experts import parse_page
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Turn

D = definition()
pytestmark = pytest.mark.skipif(D.unavailable_reason() is not None,
                                reason=f"miniwob cannot run here: {D.unavailable_reason()}")
SAMPLED = ["click-button", "click-checkboxes", "click-tab-2", "enter-text", "login-user", "choose-list",
           "use-autocomplete-nodelay", "email-inbox-delete", "click-dialog-2", "focus-text-2"]


def _chromium_descendants() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name().lower() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def env():
    instance = D.make()
    yield instance
    instance.close()
    browser.shutdown()


def _first_test_task(name: str):
    return next(t for t in D.tasks("test") if D.payload(t).task == name)


def _play_expert(env, task):
    obs = env.reset(task)
    history = [Turn(role="user", content=obs)]
    for _ in range(D.max_turns):
        reply = D.expert(task, history)
        result = env.step(parse_reply(reply).action)
        history += [Turn(role="assistant", content=reply), Turn(role="user", content=result.observation)]
        if result.terminated or result.truncated:
            return result, len(history) // 2
    raise AssertionError("the expert did not end the episode")


@pytest.mark.parametrize("name", SAMPLED)
def test_the_expert_wins_a_test_task(env, name):
    result, _ = _play_expert(env, _first_test_task(name))
    assert result.terminated and result.success is True and result.reward == 1.0
    assert result.info["raw_reward"] == 1


def test_a_reset_gives_the_same_page_and_reuses_the_browser(env):
    task = _first_test_task("click-checkboxes")
    first = env.reset(task)
    live = browser.pool().live
    assert env.reset(task) == first and first.startswith("Task: Select ")
    assert browser.pool().live == live  # the same browser served both episodes
    assert env.step("give_up()").terminated
    assert env.reset(task) == first  # refs are numbered afresh after an episode the page ended
    other = next(t for t in D.tasks("train") if D.payload(t).task == "click-checkboxes")
    assert env.reset(other) != first  # another seed, another problem


def _wrong(env, name, pick):
    obs = env.reset(_first_test_task(name))
    return env.step(pick(parse_page(obs)))


def test_wrong_answers_end_the_episode_with_reward_0(env):
    def other_button(page):
        target = page.utterance.split('"')[1]
        return f"click({next(e.ref for e in page.all('button') if e.text != target)})"

    for name, pick in [
        ("click-button", other_button),
        ("enter-text", lambda page: f"click({page.first('button', 'Submit').ref})"),  # Submit with the field empty
        ("click-tab", lambda page: f"click({[e for e in page.all('a') if e.text not in page.utterance][0].ref})"),
        ("enter-text", lambda page: "give_up()"),
    ]:
        result = _wrong(env, name, pick)
        assert result.terminated and result.success is False and result.reward == 0.0, (name, result)
        assert result.info["raw_reward"] == -1


def test_invalid_actions_get_feedback_and_the_episode_goes_on(env):
    obs = env.reset(_first_test_task("choose-list"))
    page = parse_page(obs)
    button = page.first("button")
    box = page.first("select")
    for action, why in [("click(9999)", "no element [9999]"), ("press(3)", "unknown action"),
                        (f'select({button.ref}, "x")', "not a list"),
                        (f'select({box.ref}, "Atlantis")', "no such option"),
                        ('type(4, "\\u0000")', "cannot be typed")]:
        result = env.step(action)
        assert result.invalid and not result.terminated and result.reward == 0, action
        assert why in result.observation, (action, result.observation)
    item = page.utterance.split("Select ")[1].split(" from")[0]
    assert env.step(f"select({box.ref}, {item!r})".replace("'", '"')).observation.count(f'selected="{item}"') == 1


def test_the_turn_budget_truncates(env):
    env.reset(_first_test_task("click-collapsible-nodelay"))
    result = None
    for _ in range(D.max_turns):
        result = env.step("click(99999)")
    assert result is not None and result.truncated and result.reward == 0 and result.success is False


def test_interrupt_makes_a_step_and_a_wait_for_a_browser_return():
    first = D.make()
    first.reset(_first_test_task("click-test"))
    first.interrupt()
    t0 = time.perf_counter()
    result = first.step("click(4)")
    assert "interrupted" in result.observation and not result.terminated and time.perf_counter() - t0 < 1
    # with a pool of one browser held by `first`, a second episode waits; interrupt() ends the wait at once
    small = browser.BrowserPool(max_browsers=1)
    held = small.acquire("click-test", threading.Event())
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.perf_counter()
    with pytest.raises(browser.BrowserError, match="interrupted"):
        small.acquire("click-test", cancel)
    assert time.perf_counter() - t0 < 2
    small.release(held)
    assert small.shutdown() == 1
    first.close()


def test_closing_and_shutting_the_pool_leaves_no_chromium_process(env):
    instances = [env] + [D.make() for _ in range(2)]
    for inst, name in zip(instances, ["click-test", "enter-text", "focus-text"]):
        inst.reset(_first_test_task(name))
    assert len(_chromium_descendants()) > 0
    for inst in instances:
        inst.close()
    browser.shutdown()
    deadline = time.time() + 10
    while _chromium_descendants() and time.time() < deadline:
        time.sleep(0.2)
    assert _chromium_descendants() == []
    assert browser.pool().live == 0
