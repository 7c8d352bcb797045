"""A small, real environment for engine tests: look a word up, then answer it.

Task payloads can ask for faults (a slow step, an exception) so tests drive the engine's failure paths.
"""

from __future__ import annotations

import hashlib
import time

from agenttuning.envs.base import EnvDefinition, Environment, EpisodeEnv, StepResult
from agenttuning.policies.base import Policy, Reply
from agenttuning.schema import Task, Turn

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "gamma", "heron", "iris", "jade"]


def _word(key: str) -> str:
    return WORDS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(WORDS)]


class LookupEnv(EpisodeEnv):
    """Only the family's own reset and actions: EpisodeEnv counts turns, truncates and builds the results."""

    max_turns = property(lambda self: self.definition.env_budget)  # above the family's, so the engine's cap comes first

    def start(self, task: Task) -> str:
        return f"{task.instruction}\nActions: 'lookup KEY' or 'answer WORD'."

    def act(self, action: str) -> StepResult:
        p = self.task.payload
        if p.get("slow_s"):
            time.sleep(p["slow_s"])
        if p.get("raise"):
            raise RuntimeError("the environment broke")
        verb, _, arg = action.partition(" ")
        if verb == "lookup":
            return StepResult(f"The word for {arg} is {_word(arg)}." if arg else "lookup needs a key")
        if verb == "answer":
            ok = arg.strip() == _word(p["key"])
            return self.final(float(ok), ok, "Correct." if ok else "Wrong.")
        return self.invalid(f"unknown action {verb[:40]!r}")


class LookupDefinition(EnvDefinition):
    name = "lookup"
    version = 1
    max_turns = 6
    env_budget = 50

    def __init__(self, n_train: int = 40, n_test: int = 20, extra: dict[str, dict] | None = None):
        self.n = {"train": n_train, "test": n_test}
        self.extra = extra or {}

    def tasks(self, split):  # type: ignore[no-untyped-def]
        out = []
        for i in range(self.n[split]):
            tid = f"lookup-{split}-{i:04d}"
            key = f"{split}{i}"
            payload = {"key": key, **self.extra.get(tid, {})}
            out.append(Task(id=tid, env=self.id, split=split, instruction=f"Find the word for {key}.", payload=payload))
        return out

    @property
    def system_prompt(self) -> str:
        return "Find words. Reply 'Thought: ...' then 'Action: lookup KEY' or 'Action: answer WORD'."

    @property
    def one_shot(self) -> list[Turn]:
        return [Turn(role="user", content="Find the word for demo."),
                Turn(role="assistant", content="Thought: look it up.\nAction: lookup demo")]

    def make(self) -> Environment:
        return LookupEnv(self)

    def expert(self, task: Task, history: list[Turn]) -> str:
        if sum(t.role == "assistant" for t in history) == 0:
            return f"Thought: I need the word for {task.payload['key']}.\nAction: lookup {task.payload['key']}"
        return f"Thought: The lookup told me.\nAction: answer {_word(task.payload['key'])}"

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
