"""Policies that need no model: the environment's expert, a deliberately wrong one, and a noisy teacher.

The expert is how an environment proves its own tasks (every test task solvable without a model) and how the
embedded pipeline collects trajectories offline; ``wrong`` is the floor every grader must score 0; ``noisy:P``
mixes the two per step, seeded by task id, to produce the failed trajectories that reward filtering removes.
"""

from __future__ import annotations

import hashlib
import random

from agenttuning.envs.base import EnvDefinition
from agenttuning.policies.base import Policy, Reply
from agenttuning.schema import Task, Turn


class _EnvPolicy(Policy):
    def __init__(self, env: EnvDefinition):
        self.env = env
        self._context_len = len(env.context())

    def _history(self, messages: list[Turn]) -> list[Turn]:
        return messages[self._context_len :]


class ExpertPolicy(_EnvPolicy):
    """The environment's oracle (``expert``): a short honest Thought and the right Action at each step."""

    name = "expert"

    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        return Reply(self.env.expert(task, self._history(messages)))


class WrongPolicy(_EnvPolicy):
    """Answers at once with a deliberately wrong answer (``wrong``); must score 0 everywhere."""

    name = "wrong"

    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        return Reply(self.env.wrong_answer(task))


class NoisyPolicy(_EnvPolicy):
    """``noisy:P``: at each step the wrong answer with probability P, else the expert's reply.

    Deterministic for a (task, step) pair, so re-runs and resumed runs reproduce the same trajectories.
    ``random`` is ``noisy:0.5``.
    """

    def __init__(self, env: EnvDefinition, p_wrong: float, seed: int = 0):
        super().__init__(env)
        if not 0.0 <= p_wrong <= 1.0:
            raise ValueError(f"noisy policy probability must be in [0, 1], got {p_wrong}")
        self.p_wrong, self.seed = p_wrong, seed
        self.name = f"noisy:{p_wrong:g}"

    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        history = self._history(messages)
        step = sum(1 for t in history if t.role == "assistant")
        key = hashlib.sha256(f"{self.seed}/{task.id}/{step}".encode()).digest()
        if random.Random(key).random() < self.p_wrong:
            return Reply(self.env.wrong_answer(task))
        return Reply(self.env.expert(task, history))
