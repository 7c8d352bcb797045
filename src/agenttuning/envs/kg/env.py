"""One ``kg`` episode: the question, a fresh set of variables, one tool call per turn, and the graded final answer.

Every action, valid or not, uses a turn. A ``Final Answer`` naming a defined variable (or a plain integer) ends the
episode (``terminated``) and is graded (:mod:`.grading`); anything that cannot be run — no tool call, an unknown
tool, entity or relation, an undefined variable, a wrong argument — gets feedback saying what to fix, reward 0 and
``invalid=True``, and the episode goes on. After :attr:`KgDefinition.max_turns` turns without an answer the
episode is ``truncated`` with reward 0. The graph is shared and read-only; variables are per episode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.kg import data, grading, tools
from agenttuning.envs.kg.payload import KgPayload
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.kg.definition import KgDefinition

MAX_ACTION_CHARS = 2000  # longer actions are refused unread


class KgEnv(EpisodeEnv[KgPayload]):
    """One episode of the ``kg`` environment (create one per episode; single-threaded). :class:`EpisodeEnv` owns the
    turn budget, reset before step and the invalid and final results."""

    definition: KgDefinition

    def __init__(self, definition: KgDefinition):
        super().__init__(definition)
        self._session: tools.Session | None = None

    def start(self, task: Task, payload: KgPayload) -> str:
        self._session = tools.Session(data.graph())
        return self.definition.observation(task.instruction, payload.entities)

    def act(self, action: str) -> StepResult:
        assert self._session is not None
        if len(action) > MAX_ACTION_CHARS:
            return self.invalid(f"the action is longer than {MAX_ACTION_CHARS} characters; send one tool call")
        try:
            parsed = tools.parse(action)
            if isinstance(parsed, tools.Final):
                value = self._session.final(parsed)
            else:
                return StepResult(self._session.run(parsed), info={"tool": parsed.tool})
        except tools.InvalidAction as e:
            return self.invalid(str(e))
        reward, success = grading.score(value, self.payload.kind, self.payload.answer)
        return self.final(reward, success, answer=grading.as_json(value))

    def release(self) -> None:
        self._session = None
