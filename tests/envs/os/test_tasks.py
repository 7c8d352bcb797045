"""The ``os`` tasks: derived deterministically, split without sharing an instance, and each one proven in the real
sandbox: its init builds the situation, its expert solution solves it (a question's solution prints the gold answer;
a change's check passes after it), and a wrong answer or no solution fails.

Every task of both splits is verified in the fast suite, so CI runs them all (about 35 s for the 288). Each task gets one fresh sandbox: init, then (for a change) the check before the
solution must fail, then the solution, then the check must pass.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from agenttuning.envs.derivation import split_of
from agenttuning.envs.os import tasks
from agenttuning.envs.os.sandbox import Sandbox, unavailable_reason
from agenttuning.envs.os.tasks import OsPayload, expert_answer, wrong_answer
from agenttuning.schema import Task

_WHY_NOT = unavailable_reason()
needs_sandbox = pytest.mark.skipif(_WHY_NOT is not None, reason=f"the os sandbox cannot run here: {_WHY_NOT}")

INIT_S, COMMAND_S = 10.0, 4.0  # the environment's limits for an init/check script and for one command


@pytest.fixture(scope="module")
def derived() -> dict[str, list[Task]]:
    return tasks.derive_os_tasks()


def _answer_in(action: str) -> str:
    assert action.startswith("answer(") and action.endswith(")"), action
    return action[len("answer("):-1]


def _verify(task: Task) -> None:
    """Run ``task`` in a fresh sandbox; fail with the task id and what went wrong."""
    p = OsPayload.model_validate(task.payload)
    sandbox = Sandbox()
    sandbox.start()
    try:
        init = sandbox.run_script(p.init, timeout_s=INIT_S)
        assert init.exit_code == 0 and not init.timed_out, f"{task.id} ({p.kind}): init failed: {init.output}"
        if p.check is not None:
            before = sandbox.run_script(p.check, "", timeout_s=INIT_S)
            assert before.exit_code != 0, f"{task.id} ({p.kind}): the check passes without the solution"
        solved = sandbox.run(p.solution, timeout_s=COMMAND_S)
        assert not solved.timed_out and not solved.truncated, f"{task.id} ({p.kind}): solution: {solved}"
        if p.answer is not None:
            printed = solved.output.strip().splitlines()
            assert printed and printed[-1].strip() == p.answer, \
                f"{task.id} ({p.kind}): the solution printed {solved.output!r}, the gold answer is {p.answer!r}"
            assert _answer_in(expert_answer(p)).strip() == p.answer.strip()
            assert _answer_in(wrong_answer(p)).strip() != p.answer.strip()
        else:
            assert expert_answer(p) == wrong_answer(p) == "finish"
            after = sandbox.run_script(p.check, "", timeout_s=INIT_S)
            assert after.exit_code == 0 and not after.timed_out, \
                f"{task.id} ({p.kind}): the check fails after the solution: {after.output}"
    finally:
        sandbox.close()


def _verify_all(chosen: list[Task]) -> float:
    started = time.perf_counter()
    failures = []
    for task in chosen:
        try:
            _verify(task)
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert not failures, "\n".join(failures)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------------------
# Derivation


def test_derivation_gives_enough_tasks_of_every_template_with_stable_ids(derived):
    assert len(derived["train"]) >= 150 and len(derived["test"]) >= 50
    for split, split_tasks in derived.items():
        assert [t.id for t in split_tasks] == [f"os-{split}-{i:05d}" for i in range(len(split_tasks))]
        assert all(t.env == "os-v1" and t.split == split for t in split_tasks)
        kinds = Counter(t.payload["kind"] for t in split_tasks)
        assert set(kinds) == {t.__name__ for t in tasks.TEMPLATES}  # every template in both splits
        assert max(kinds.values()) <= tasks.CAP[split]
    assert tasks.derive_os_tasks() == derived  # the same on every call (seeded by SHA-256, not Python's hash)


def test_no_instance_and_no_question_is_in_both_splits(derived):
    instances = {s: {(t.payload["kind"], t.payload["init"], t.instruction) for t in ts} for s, ts in derived.items()}
    assert not instances["train"] & instances["test"]
    questions = {s: {t.instruction for t in ts} for s, ts in derived.items()}
    assert not questions["train"] & questions["test"]
    for split, split_tasks in derived.items():  # the split is the hash of the instance
        assert all(split_of("os-split", f"{t.payload['kind']}\x1f{t.payload['init']}\x1f{t.instruction}",
                            tasks.TEST_PERCENT) == split for t in split_tasks)


def test_payloads_are_graded_one_way_and_questions_say_how_to_answer(derived):
    for t in derived["train"] + derived["test"]:
        p = OsPayload.model_validate(t.payload)
        assert p.model_dump() == t.payload
        if p.answer is not None:
            assert p.answer == p.answer.strip() and p.answer and "Answer with" in t.instruction, t.id
    both = {"kind": "k", "init": "", "solution": "", "answer": "1", "check": "exit 0"}
    with pytest.raises(ValueError, match="exactly one"):
        OsPayload.model_validate(both)
    with pytest.raises(ValueError, match="exactly one"):
        OsPayload.model_validate({**both, "answer": None, "check": None})
    with pytest.raises(ValueError, match="extra"):
        OsPayload.model_validate({**both, "check": None, "secret": 1})


def test_wrong_answer_differs_from_the_gold_and_changes_end_with_finish():
    number = OsPayload(kind="k", init="", solution="", answer="41")
    word = OsPayload(kind="k", init="", solution="", answer="/root/a b")
    change = OsPayload(kind="k", init="", solution="", check="exit 0")
    assert (expert_answer(number), wrong_answer(number)) == ("answer(41)", "answer(42)")
    assert (expert_answer(word), wrong_answer(word)) == ("answer(/root/a b)", "answer(/root/a bx)")
    assert expert_answer(change) == wrong_answer(change) == "finish"


# --------------------------------------------------------------------------------------------------------------
# Every task proven in the real sandbox


@needs_sandbox
def test_every_test_task_is_solved_by_its_solution_and_fails_without_it(derived):
    seconds = _verify_all(derived["test"])
    print(f"verified {len(derived['test'])} test tasks in {seconds:.1f} s")


@needs_sandbox
def test_every_training_task_is_solved_by_its_solution(derived):
    seconds = _verify_all(derived["train"])
    print(f"verified {len(derived['train'])} training tasks in {seconds:.1f} s")
