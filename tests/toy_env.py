"""A small, real environment for engine tests: look a word up, then answer it.

Task payloads can ask for faults (a slow step, an exception) so tests drive the engine's failure paths.
"""

from __future__ import annotations

import hashlib
import time

from pydantic import BaseModel, Field

from agenttuning.envs.base import EnvDefinition, EpisodeEnv, StepResult
from agenttuning.policies.base import Policy, Reply
from agenttuning.schema import Task, Turn

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "gamma", "heron", "iris", "jade"]


def _word(key: str) -> str:
    return WORDS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(WORDS)]


class LookupPayload(BaseModel):
    key: str  # the task: find the word for this key
    slow_s: float = 0.0  # fault: every step sleeps this long
    fail: bool = Field(False, alias="raise")  # fault: every step raises


class LookupEnv(EpisodeEnv[LookupPayload]):
    """Only the family's own reset and actions: EpisodeEnv validates the payload, counts turns, builds results."""

    max_turns = property(lambda self: self.definition.env_budget)  # above the family's, so the engine's cap comes first

    def start(self, task: Task, payload: LookupPayload) -> str:
        return f"{task.instruction}\nActions: 'lookup KEY' or 'answer WORD'."

    def act(self, action: str) -> StepResult:
        time.sleep(self.payload.slow_s)
        if self.payload.fail:
            raise RuntimeError("the environment broke")
        verb, _, arg = action.partition(" ")
        if verb == "lookup":
            return StepResult(f"The word for {arg} is {_word(arg)}." if arg else "lookup needs a key")
        if verb == "answer":
            ok = arg.strip() == _word(self.payload.key)
            return self.final(float(ok), ok, "Correct." if ok else "Wrong.")
        return self.invalid(f"unknown action {verb[:40]!r}")


class LookupDefinition(EnvDefinition[LookupPayload]):
    name = "lookup"
    version = 1
    max_turns = 6
    env_budget = 50
    env_class = LookupEnv
    system_prompt = "Find words. Reply 'Thought: ...' then 'Action: lookup KEY' or 'Action: answer WORD'."
    one_shot = [Turn(role="user", content="Find the word for demo."),
                Turn(role="assistant", content="Thought: look it up.\nAction: lookup demo")]

    def __init__(self, n_train: int = 40, n_test: int = 20, extra: dict[str, dict] | None = None):
        self.n, self.extra = {"train": n_train, "test": n_test}, extra or {}

    def derive_tasks(self) -> dict[str, list[Task]]:
        def task(split: str, i: int) -> Task:
            tid, key = f"lookup-{split}-{i:04d}", f"{split}{i}"
            return Task(id=tid, env=self.id, split=split, instruction=f"Find the word for {key}.",
                        payload={"key": key, **self.extra.get(tid, {})})

        return {split: [task(split, i) for i in range(n)] for split, n in self.n.items()}

    def expert(self, task: Task, history: list[Turn]) -> str:
        key = self.payload(task).key
        if not any(t.role == "assistant" for t in history):
            return f"Thought: I need the word for {key}.\nAction: lookup {key}"
        return f"Thought: The lookup told me.\nAction: answer {_word(key)}"

    def wrong_answer(self, task: Task) -> str:
        return "Thought: I guess.\nAction: answer nope"


class Scripted(Policy):
    """Replies from a fixed list (cycled), or raises when the item is an exception."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    async def act(self, messages, *, task):
        r = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(r, Exception):
            raise r
        return Reply(r)
