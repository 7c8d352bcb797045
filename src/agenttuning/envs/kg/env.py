"""One ``kg`` episode: the question, a fresh set of variables, one tool call per turn, and the graded final answer.

Every action, valid or not, uses a turn. A ``Final Answer`` naming a defined variable (or a plain integer) ends the
episode (``terminated``) and is graded (:mod:`.grading`); anything that cannot be run — no tool call, an unknown
tool, entity or relation, an undefined variable, a wrong argument — gets feedback saying what to fix, reward 0 and
``info["invalid"] = True``, and the episode goes on. After :attr:`KgDefinition.max_turns` turns without an answer the
episode is ``truncated`` with reward 0. The graph is shared and read-only; variables are per episode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agenttuning.envs.base import Environment, StepResult, truncate_at_budget
from agenttuning.envs.kg import data, grading, tools
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.kg.definition import KgDefinition

MAX_ACTION_CHARS = 2000  # longer actions are refused unread


class KgEnv(Environment):
    """One episode of the ``kg`` environment (create one per episode; single-threaded)."""

    def __init__(self, definition: KgDefinition):
        self._definition = definition
        self._session: tools.Session | None = None
        self._task: Task | None = None
        self._turns = 0
        self._done = True

    def reset(self, task: Task) -> str:
        if task.env != self._definition.id:
            raise ValueError(f"task {task.id} belongs to {task.env}, not {self._definition.id}")
        self._session = tools.Session(data.graph())
        self._task, self._turns, self._done = task, 0, False
        return self._definition.observation(task.instruction, task.payload["entities"])

    def step(self, action: str) -> StepResult:
        if self._done or self._session is None or self._task is None:
            raise RuntimeError("the episode is over or was never started: call reset(task) first")
        self._turns += 1
        result = truncate_at_budget(self._act(action.strip()), self._turns, self._definition.max_turns)
        self._done = result.terminated or result.truncated
        return result

    def _act(self, action: str) -> StepResult:
        assert self._session is not None and self._task is not None
        if len(action) > MAX_ACTION_CHARS:
            return self._invalid(f"the action is longer than {MAX_ACTION_CHARS} characters; send one tool call")
        try:
            parsed = tools.parse(action)
            if isinstance(parsed, tools.Final):
                value = self._session.final(parsed)
            else:
                return StepResult(self._session.run(parsed), info={"tool": parsed.tool})
        except tools.InvalidAction as e:
            return self._invalid(str(e))
        reward, success = grading.score(value, self._task.payload)
        # the final observation does not say whether the answer was right: it is never shown to a policy anyway
        info = {"success": success, "answer": grading.as_json(value)}
        return StepResult("Answer received; the task is over.", reward, terminated=True, info=info)

    def _invalid(self, reason: str) -> StepResult:
        return StepResult(self._definition.invalid_action(reason), 0.0, info={"invalid": True, "reason": reason})

    def close(self) -> None:
        self._session = None
        self._done = True
