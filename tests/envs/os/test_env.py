"""The os environment's episode: actions parsed linearly, a shell that keeps its state, answers and checks graded."""

from __future__ import annotations

import time

import pytest

from agenttuning.envs.os.env import answer_text, fenced_block
from agenttuning.envs.os.sandbox import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}")


@pytest.fixture(scope="module")
def os_env():
    from agenttuning.envs.base import get

    return get("os")


def _task(definition, kind_has_answer: bool):
    return next(t for t in definition.tasks("test") if (definition.payload(t).answer is not None) == kind_has_answer)


def test_actions_parse_in_linear_time_and_tolerate_their_variants():
    assert fenced_block("bash\n```bash\nls -l\n```") == "ls -l"
    assert fenced_block("bash\n```sh\nx=1\necho $x\n```") == "x=1\necho $x"
    assert fenced_block("bash\n```\nunclosed\nfence") == "unclosed\nfence"
    t0 = time.perf_counter()  # many fences and no newline: a backtracking pattern would be quadratic here
    assert fenced_block("```" * 300_000) is None and fenced_block("```\n" + "```x" * 200_000) == ""
    assert time.perf_counter() - t0 < 0.5
    assert answer_text("(42)") == "42" and answer_text('("a b")') == "a b" and answer_text(": 7") == "7"
    assert answer_text("(f(x))") == "f(x)"  # the last closing bracket ends it


def test_the_shell_keeps_cwd_variables_and_jobs_between_commands(os_env):
    env = os_env.make()
    try:
        env.reset(_task(os_env, True))
        assert "exit code" not in env.step("bash\n```bash\nmkdir -p /root/w && cd /root/w && export X=41\n```").observation
        assert env.step("bash\n```bash\npwd; echo $((X + 1))\n```").observation.splitlines()[:2] == ["/root/w", "42"]
        env.step("bash\n```bash\nsleep 30 &\necho started\n```")
        assert "sleep 30" in env.step("bash\n```bash\njobs\n```").observation
        out = env.step("bash\n```bash\nfalse\n```").observation
        assert "exit code 1" in out and "printed nothing" in out
    finally:
        env.close()


def test_an_answer_is_graded_by_exact_match_and_a_change_by_its_check(os_env):
    question = _task(os_env, True)
    env = os_env.make()
    try:
        env.reset(question)
        gold = os_env.payload(question).answer
        assert env.step(f"answer( {gold} )").success is True
        env.reset(question)
        assert env.step(f"answer({gold}0)").reward == 0.0
        change = _task(os_env, False)
        env.reset(change)
        assert env.step("finish").success is False  # nothing was changed yet
        env.reset(change)
        env.step(f"bash\n```bash\n{os_env.payload(change).solution}\n```")
        assert env.step("finish").success is True
    finally:
        env.close()


def test_anything_else_is_invalid_and_costs_a_turn(os_env):
    env = os_env.make()
    try:
        env.reset(_task(os_env, True))
        r = env.step("run ls please")
        assert r.invalid and "'bash' with a ```bash block" in r.observation and env.turns == 1
        assert env.step("bash\n```bash\n\n```").invalid
        assert env.step("bash\n```bash\n" + "x" * 20_000 + "\n```").invalid
    finally:
        env.close()


def test_each_episode_starts_in_a_fresh_sandbox(os_env):
    env = os_env.make()
    task = _task(os_env, True)
    try:
        env.reset(task)
        env.step("bash\n```bash\necho leftover > /root/trace.txt\n```")
        env.reset(task)
        assert "No such file" in env.step("bash\n```bash\ncat /root/trace.txt\n```").observation
    finally:
        env.close()
