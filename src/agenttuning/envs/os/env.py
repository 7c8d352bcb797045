"""One ``os`` episode: a fresh sandboxed shell (:mod:`.sandbox`), the task's init script, and three actions.

Actions (AgentBench's operating-system task, in this project's one ReAct envelope ``Thought:`` / ``Action:``):

- ``bash`` and then a fenced ```` ```bash ```` block: the block runs in the episode's persistent shell (the working
  directory, variables and background jobs carry over from command to command, as in a terminal) and its output,
  cut at 800 characters as AgentBench cuts it, is the observation;
- ``answer(TEXT)``: ends the task; graded by exact match after stripping (a question task) or by the task's check
  script, which is given TEXT as ``$1`` (a task that changes the system);
- ``finish``: ends the task without an answer (for tasks that change the system: the check script decides).

Anything else gets the invalid-action feedback and uses a turn. Parsing is linear in the reply (fences are found
with ``str.find``, never a backtracking pattern), and a command longer than :data:`MAX_COMMAND_CHARS` is refused.
What a command may do is bounded by the sandbox (wall time, CPU, memory, processes, disk, output; no network).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.os.sandbox import CommandResult, Sandbox, SandboxLimits
from agenttuning.envs.os.tasks import OsPayload
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.os.definition import OsDefinition

MAX_COMMAND_CHARS = 16_000
COMMAND_WALL_S = 4.0  # per command: under the conformance check's 5 s per call, ample for every task here
SCRIPT_WALL_S = 10.0  # an init or check script
LIMITS = SandboxLimits(wall_s=COMMAND_WALL_S)

_VERB = re.compile(r"[*_`#\s]*([A-Za-z]+)", re.IGNORECASE)


def fenced_block(text: str) -> str | None:
    """The body of the first fenced block (```` ```bash ````, ```` ```sh ````, or bare), or None; linear time.

    >>> fenced_block("bash\\n```bash\\nls -l\\n```")
    'ls -l'
    >>> fenced_block("no fence") is None
    True
    """
    start = text.find("```")
    if start < 0:
        return None
    line_end = text.find("\n", start + 3)
    if line_end < 0:
        return None
    end = text.find("```", line_end + 1)
    body = text[line_end + 1 :] if end < 0 else text[line_end + 1 : end]  # an unclosed fence runs to the end
    return body.strip("\n")


def answer_text(rest: str) -> str:
    """What ``answer(...)`` holds: between the first ``(`` and the last ``)``, stripped, one layer of matching
    quotes removed.

    >>> answer_text('("42")'), answer_text("( /tmp/a b )")
    ('42', '/tmp/a b')
    """
    open_, close = rest.find("("), rest.rfind(")")
    inner = rest[open_ + 1 : close] if 0 <= open_ < close else rest.strip().removeprefix(":")
    inner = inner.strip()
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "\"'`":
        inner = inner[1:-1].strip()
    return inner


def observation_of(result: CommandResult) -> str:
    """What the agent sees of a command: its output (or that there was none), and why it was stopped or cut."""
    text = result.output if result.output.strip() else "(the command printed nothing)"
    notes = []
    if result.timed_out:
        notes.append(f"the command was stopped after {COMMAND_WALL_S:g} s")
    elif result.exit_code not in (0, None):
        notes.append(f"exit code {result.exit_code}")
    return text + (f"\n[{'; '.join(notes)}]" if notes else "")


class OsEnv(EpisodeEnv[OsPayload]):
    """An episode in a fresh sandbox: the init script has run, the agent's shell is waiting in the work dir."""

    definition: OsDefinition

    def __init__(self, definition: OsDefinition):
        super().__init__(definition)
        self._sandbox: Sandbox | None = None

    def start(self, task: Task, payload: OsPayload) -> str:
        sandbox = Sandbox(LIMITS)
        sandbox.start()
        self._sandbox = sandbox
        init = sandbox.run_script(payload.init, timeout_s=SCRIPT_WALL_S)
        if init.timed_out or init.exit_code != 0:
            raise RuntimeError(f"task {task.id}: its init script failed ({init.exit_code}): {init.output[:300]}")
        return task.instruction

    def act(self, action: str) -> StepResult:
        assert self._sandbox is not None
        m = _VERB.match(action)
        verb = m.group(1).lower() if m else ""
        rest = action[m.end() :] if m else action
        if verb == "bash":
            command = fenced_block(rest)
            if command is None:
                command = rest.strip()
            if not command.strip():
                return self.invalid("'bash' needs a command in a ```bash block")
            if len(command) > MAX_COMMAND_CHARS:
                return self.invalid(f"the command is longer than {MAX_COMMAND_CHARS} characters")
            return StepResult(observation_of(self._sandbox.run(command, timeout_s=COMMAND_WALL_S)), 0.0)
        if verb == "answer":
            return self._grade(answer_text(rest))
        if verb == "finish":
            return self._grade("")
        return self.invalid("the action must be 'bash' with a ```bash block, 'answer(...)' or 'finish'")

    def _grade(self, answer: str) -> StepResult:
        assert self._sandbox is not None
        payload = self.payload
        if payload.answer is not None:
            ok = answer.strip() == payload.answer.strip()
        else:
            check = self._sandbox.run_script(payload.check or "exit 1", answer, timeout_s=SCRIPT_WALL_S)
            ok = check.exit_code == 0 and not check.timed_out
        return self.final(1.0 if ok else 0.0, ok, answer=answer)

    def interrupt(self) -> None:
        if self._sandbox is not None:
            self._sandbox.interrupt()

    def release(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()
