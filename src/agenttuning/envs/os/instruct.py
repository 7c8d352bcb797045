"""Self-instruct for the ``os`` environment: the teacher's prompt, reading its drafts, and turning a draft into a task.

The family-specific half of :mod:`agenttuning.stages.instruct` (which calls the teacher, runs the expert and the
wrong answer through the real environment, and deduplicates). Here:

- :func:`instruct_prompt`: what the teacher is shown: the environment's description, what the sandbox is (root in
  ``/root``, no network, ``/usr`` read-only, the time limits), the task format (a JSON array of drafts) and a few
  seed tasks (train tasks) written as drafts.
- :func:`read_drafts`: the shared strict reader (:func:`agenttuning.envs.instruct.read_drafts`) with :class:`OsDraft`.
- :func:`draft_task`: runs the draft the way an episode does, in the environment's own bubblewrap sandbox
  (:data:`~.env.LIMITS`; the teacher's scripts never run anywhere else): a fresh sandbox, the ``init`` script
  (:meth:`~.sandbox.Sandbox.run_script`, as :meth:`.env.OsEnv.start` runs it), then the ``solution`` in the
  persistent shell (:meth:`~.sandbox.Sandbox.run`, as the expert's ``bash`` action runs it), then for a change the
  ``check`` script given ``""`` as ``$1`` (what ``finish`` gives it). Every script gets half the episode's time
  (:data:`INIT_WALL_S`, :data:`SOLUTION_WALL_S`, :data:`CHECK_WALL_S`), so a kept task has room to spare when the
  episode runs it. A question's gold answer is what its solution prints (one line, as the derived tasks' solutions
  print theirs); a change's gold is its check. Everything is run twice, each time in a fresh sandbox, and must agree
  (an answer from ``$RANDOM``, the clock or a pid is not a task). Whatever the sandbox had to contain (a fork bomb,
  a memory hog, a loop past its time, a flood of output, a shell that had to be restarted) rejects the draft.

A kept draft becomes a :class:`~agenttuning.schema.Task` shaped like a derived one (payload validated by
:class:`.tasks.OsPayload`, kind :data:`KIND`), id ``os-instruct-<sha256 of instruction and payload>``: the same
draft always gets the same id. The stage then plays the expert (must score 1) and the wrong answer (the gold plus
one, or ``finish`` on the untouched system: must score 0) in the real environment.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agenttuning.envs.instruct import MAX_REPLY_CHARS, Rejected
from agenttuning.envs.instruct import read_drafts as shared_read_drafts
from agenttuning.envs.os.env import COMMAND_WALL_S, LIMITS, SCRIPT_WALL_S, answer_text
from agenttuning.envs.os.sandbox import CommandResult, Sandbox
from agenttuning.envs.os.tasks import OsPayload
from agenttuning.schema import Task, Turn

if TYPE_CHECKING:
    from agenttuning.envs.os.definition import OsDefinition

__all__ = ["CAPS", "KIND", "MAX_REPLY_CHARS", "REASONS", "Draft", "OsDraft", "Rejected", "draft_task",
           "instruct_prompt", "read_drafts", "solution_key"]  # fmt: skip

MAX_INSTRUCTION_CHARS = 600
MAX_INIT_CHARS = 4_000
MAX_SOLUTION_CHARS = 1_000
MAX_CHECK_CHARS = 2_000
MAX_ANSWER_CHARS = 100
CAPS = {"instruction": MAX_INSTRUCTION_CHARS, "init": MAX_INIT_CHARS, "solution": MAX_SOLUTION_CHARS,
        "check": MAX_CHECK_CHARS, "answer": MAX_ANSWER_CHARS}  # fmt: skip
KIND = "instruct"  # the payload's kind (a derived task's template name) for every self-instructed task
INIT_WALL_S = SCRIPT_WALL_S / 2  # the episode allows SCRIPT_WALL_S for init and check, COMMAND_WALL_S a command
CHECK_WALL_S = SCRIPT_WALL_S / 2
SOLUTION_WALL_S = COMMAND_WALL_S / 2
SETTLE_S = 0.2  # a fork bomb reaches the process limit in under 0.1 s (measured: docs/instruct.md, ## os)
RUNS = 2  # fresh sandboxes a draft is run in; all must agree
#: what :func:`draft_task` can reject a draft for, in the order it checks (running the reference solution)
REASONS = ("sandbox_limit", "init_fails", "solution_fails", "no_answer", "unusable_answer", "answer_mismatch",
           "check_fails", "unstable")  # fmt: skip

# The sandbox's notes when it had to step in (see .sandbox: containment, time, output, restarts); a note is a line
# of its own at the end of the output. A script that prints such a line itself is only rejected, never kept.
_LIMIT_NOTE = re.compile(r"^\[(?:the sandbox |out of memory|CPU time limit|the command |the shell |the script |"
                         r"a new shell )", re.MULTILINE)  # fmt: skip


class OsDraft(BaseModel):
    """One task as the teacher writes it: the instruction, the bash ``init`` that builds the situation, the bash
    ``solution``, and for a change the bash ``check`` (exit 0 once the change is made). A question has no check: its
    answer is what the solution prints; ``answer``, when given, must be exactly that. Strict: unknown keys and wrong
    types fail."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    instruction: str = Field(min_length=1)
    init: str = ""
    solution: str = Field(min_length=1)
    answer: str | None = None  # a question's expected answer (optional: the solution's output decides)
    check: str | None = Field(None, min_length=1)  # a change's check script; absent for a question

    @model_validator(mode="after")
    def _question_or_change(self) -> OsDraft:
        if self.answer is not None and self.check is not None:
            raise ValueError("a task has an answer (a question) or a check (a change), not both")
        return self


Draft = OsDraft  # the name the stage reads


def _seed_entry(task: Task) -> dict[str, Any]:
    p = task.payload
    entry: dict[str, Any] = {"instruction": task.instruction, "init": p["init"], "solution": p["solution"]}
    if p.get("check") is not None:
        entry["check"] = p["check"]
    else:
        entry["answer"] = p["answer"]
    return entry


def instruct_prompt(definition: OsDefinition, seeds: list[Task], k: int) -> list[Turn]:
    """The messages asking the teacher for ``k`` new tasks, showing ``seeds`` (derived tasks) as examples."""
    examples = "\n".join(json.dumps(_seed_entry(t), ensure_ascii=False) for t in seeds)
    system = (
        "You write new tasks for an agent environment. Each task must be checkable: its scripts are run in the real "
        "sandbox, and a task whose scripts fail, or whose answer is not exactly what its solution prints, is thrown "
        "away."
    )
    user = f"""Environment: {definition.description}
The agent is root at a bash prompt in a fresh Linux sandbox, working directory /root. There is no network (no \
package installs), /usr is read-only, and the tools are those of a small Debian system (coreutils, findutils, grep, \
sed, awk, tar, gzip, procps). Put the task's files under /root (or /home, /tmp, /var, /etc).

Task format: a JSON object with these keys and nothing else:
- "instruction": what the agent is asked, in plain English (at most {MAX_INSTRUCTION_CHARS} characters): a question \
about the system that says how to write the answer (e.g. "Answer with the number only."), or a change to make.
- "init": a bash script that builds the situation before the agent starts: files, directories, permissions, \
background processes (at most {MAX_INIT_CHARS} characters; it must exit 0 within {INIT_WALL_S:g} seconds).
- "solution": the bash commands that solve the task (at most {MAX_SOLUTION_CHARS} characters; within \
{SOLUTION_WALL_S:g} seconds). For a question it prints the answer and nothing else, on one line.
- For a question: "answer" (optional): the exact answer as a JSON string, which must be what the solution prints.
- For a change: "check": a bash script that exits 0 once the change is made and non-zero on the untouched system \
(at most {MAX_CHECK_CHARS} characters).
The answer must not depend on the clock, process ids or chance. Name every path and value the agent needs.

Examples:
{examples}

Write {k} new tasks, different from the examples and from each other: other files, other data, other commands. \
Reply with a JSON array of {k} task objects and nothing else."""
    return [Turn(role="system", content=system), Turn(role="user", content=user)]


def read_drafts(text: str, limit: int) -> tuple[list[OsDraft | Rejected], Rejected | None]:
    """The teacher's reply as drafts (:func:`agenttuning.envs.instruct.read_drafts` with :class:`OsDraft`)."""
    return shared_read_drafts(text, limit, OsDraft, CAPS)


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be run as written (a NUL byte, dropped on the way into the sandbox; a lone surrogate)."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (text that is not valid Unicode)"
    return None


def _limit_hit(step: str, result: CommandResult, wall_s: float) -> Rejected | None:
    """Whether the sandbox had to step in while ``step`` ran (its time, or a note: see :data:`_LIMIT_NOTE`)."""
    if result.timed_out:
        return Rejected(reason="sandbox_limit", detail=f"{step}: ran past {wall_s:g} s")
    note = _LIMIT_NOTE.search(result.output)
    if note is not None:
        line = result.output[note.start() :].split("\n", 1)[0]
        return Rejected(reason="sandbox_limit", detail=f"{step}: {line}")
    if result.exit_code is None:
        return Rejected(reason="sandbox_limit", detail=f"{step}: the sandbox stopped")
    return None


def _failed(reason: str, step: str, result: CommandResult) -> Rejected:
    return Rejected(reason=reason, detail=f"{step} exits {result.exit_code}: {result.output.strip()[-150:]}")


def _gold_answer(result: CommandResult) -> str | Rejected:
    """A question's gold answer from its solution's output: exactly one line, short, that ``answer(...)`` keeps."""
    if result.truncated:
        return Rejected(reason="unusable_answer", detail="the solution's output was cut")
    printed = result.output.strip()
    if not printed:
        return Rejected(reason="no_answer", detail="the solution prints nothing")
    if "\n" in printed:
        return Rejected(reason="unusable_answer", detail=f"the solution prints {printed.count(chr(10)) + 1} lines")
    if len(printed) > MAX_ANSWER_CHARS:
        return Rejected(reason="unusable_answer", detail=f"an answer of {len(printed)} characters")
    if answer_text(f"({printed})") != printed:  # what the expert's answer(...) would hand to the grader
        return Rejected(reason="unusable_answer", detail=f"answer({printed}) reads as something else")
    return printed


def _settle(sandbox: Sandbox, plumbing: int) -> None:
    """Wait until only the sandbox's own ``plumbing`` processes are left, at most :data:`SETTLE_S`: what runs in the
    background longer (a fork bomb, or a task's own processes) gets that long to show what it does."""
    deadline = time.monotonic() + SETTLE_S
    while len(sandbox.host_pids) > plumbing and time.monotonic() < deadline:
        time.sleep(0.01)


def _run_once(draft: OsDraft) -> str | None | Rejected:
    """Run ``draft`` in one fresh sandbox: the question's gold answer, None for a change whose check passed, or why
    not."""
    sandbox = Sandbox(LIMITS)
    sandbox.start()
    try:
        plumbing = len(sandbox.host_pids)  # the supervisor, the shell and their pipes
        init = sandbox.run_script(draft.init, timeout_s=INIT_WALL_S)
        if hit := _limit_hit("init", init, INIT_WALL_S):
            return hit
        if init.exit_code != 0:
            return _failed("init_fails", "init", init)
        solved = sandbox.run(draft.solution, timeout_s=SOLUTION_WALL_S)
        if hit := _limit_hit("solution", solved, SOLUTION_WALL_S):
            return hit
        if solved.exit_code != 0:
            return _failed("solution_fails", "the solution", solved)
        checked = None if draft.check is None else sandbox.run_script(draft.check, "", timeout_s=CHECK_WALL_S)
        if checked is not None and (hit := _limit_hit("check", checked, CHECK_WALL_S)):
            return hit
        _settle(sandbox, plumbing)
        probe = sandbox.run("true", timeout_s=SOLUTION_WALL_S)  # what the sandbox contained meanwhile, if anything
        if hit := _limit_hit("in the background", probe, SOLUTION_WALL_S):
            return hit
        if checked is None:
            return _gold_answer(solved)
        if checked.exit_code != 0:
            return _failed("check_fails", "after the solution, the check", checked)
        return None
    finally:
        sandbox.close()


def draft_task(definition: OsDefinition, draft: OsDraft) -> Task | Rejected:
    """The task a draft makes once it has run in the sandbox (see the module docs), or why it cannot be one."""
    for name in ("instruction", "init", "solution", "answer", "check"):
        problem = _text_problem(getattr(draft, name) or "")
        if problem:
            return Rejected(reason="unparsable", detail=f"{name}: {problem}")
    gold = _run_once(draft)
    if isinstance(gold, Rejected):
        return gold
    if draft.check is None and draft.answer is not None and draft.answer.strip() != gold:
        return Rejected(reason="answer_mismatch", detail=f"the solution prints {gold!r}, not {draft.answer!r}")
    for _ in range(RUNS - 1):
        again = _run_once(draft)
        if isinstance(again, Rejected):
            return Rejected(reason="unstable", detail=f"passed once, then {again.reason}: {again.detail}"[:300])
        if again != gold:
            return Rejected(reason="unstable", detail=f"the solution printed {gold!r}, then {again!r}")
    payload: dict[str, Any] = {"kind": KIND, "init": draft.init, "solution": draft.solution, "answer": gold,
                               "check": draft.check}  # fmt: skip
    OsPayload.model_validate(payload)  # the same model the episode validates at reset
    digest = hashlib.sha256(json.dumps({"instruction": draft.instruction, "payload": payload}, sort_keys=True,
                                       ensure_ascii=False).encode()).hexdigest()[:16]  # fmt: skip
    return Task(id=f"os-instruct-{digest}", env=definition.id, split="train", instruction=draft.instruction,
                payload=payload)  # fmt: skip


def _squash(script: str | None) -> str:
    return " ".join((script or "").split())


def solution_key(task: Task) -> str:
    """A task's situation and solution, whitespace collapsed: two tasks with the same init script and the same
    solution ask for the same thing (the same answer, the same change), however differently worded."""
    return f"{_squash(task.payload.get('init'))}\x1f{_squash(task.payload.get('solution'))}"
