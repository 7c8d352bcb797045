"""The policy contract: one async call from the conversation so far to the agent's next reply.

Every policy (an OpenAI-compatible endpoint, a local Hugging Face model, an environment's expert, a baseline) is used
the same way by the rollout engine::

    reply = await policy.act(messages, task=task)

``messages`` is the whole conversation the agent has seen (context, task, replies and observations) as
:class:`~agenttuning.schema.Turn` objects, ending on a user turn. Policies raise :class:`PolicyError` when they
cannot produce a reply for good (after their own retries); the engine records that as a failed episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from agenttuning.schema import Task, Turn, Usage


class PolicyError(RuntimeError):
    """The policy could not produce a reply (retries exhausted, invalid response, model failure)."""


@dataclass(frozen=True)
class Reply:
    """A policy's answer: the text, what it cost, and (where the policy knows) why generation ended."""

    text: str
    usage: Usage = Usage()
    #: ``"stop"`` (an end-of-turn or eos token) or ``"length"`` (the token limit); None when not known
    finish_reason: Literal["stop", "length"] | None = None


class Policy(ABC):
    """Async policy. Implementations must be safe to call from many concurrent episodes."""

    #: spec string that recreates the policy, recorded in each trajectory (e.g. ``openai:gpt-4o``)
    name: str = "policy"

    @abstractmethod
    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        """The next assistant reply for ``messages`` (which ends on a user turn)."""

    def count_tokens(self, messages: list[Turn]) -> int:
        """Tokens ``messages`` take in this policy's context window (default: ~4 characters a token)."""
        return sum(len(m.content) for m in messages) // 4 + 4 * len(messages)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients, threads or models."""
