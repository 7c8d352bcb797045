"""The one data model that flows through every stage: tasks, steps, trajectories and conversations.

Records are frozen pydantic models with a schema version. A trajectory holds everything needed to rebuild the exact
conversation the policy saw (its in-context prefix, the first observation and every step), so the training
conversation is *derived* from it (:func:`conversation`) and never stored twice. Record layouts (AgentInstruct,
ShareGPT, OpenAI messages) are converted in :mod:`agenttuning.data.formats`; this module imports nothing from the
other packages.

The AgentInstruct layout (Zeng et al., 2023, section 2.1) is ``{"id", "conversations": [{"from", "value", "loss"}]}``
with ``from`` in ``human``/``gpt`` and ``loss`` null on human turns, false on in-context gpt turns (the "Ok."
acknowledgement of the instructions, one-shot examples) and true on the Thought+Action turns that are trained.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]
EndReason = Literal[
    "done",  # the environment ended the task (terminated)
    "env_truncated",  # the environment stopped the task (its own step budget)
    "max_turns",  # the engine's turn budget ran out
    "context_length",  # the conversation outgrew the context budget
    "repeated_action",  # the same action several times in a row (the paper counts this as failure)
    "timeout",  # the per-episode wall-clock limit
    "policy_error",  # the policy failed for good (retries exhausted, server gone)
    "env_error",  # the environment raised
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Task(_Frozen):
    """One task instance of an environment."""

    id: str = Field(description="Unique id across environments and splits, e.g. 'db-test-00042'.")
    env: str = Field(description="Versioned environment id that owns the task, e.g. 'db-v1'.")
    split: Literal["train", "test"] = Field(description="Deterministic split the task belongs to.")
    instruction: str = Field(description="What the agent is asked to do, in natural language.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Environment-specific data: gold answer, setup, grading hints."
    )


class Turn(_Frozen):
    """One conversation turn; ``loss`` says whether its tokens are trained (None on user turns)."""

    role: Role = Field(
        description="'user' (environment/human side), 'assistant' (the agent) or 'system' (general chat data only)."
    )
    content: str = Field(description="The turn's text, verbatim.")
    loss: bool | None = Field(
        default=None, description="Assistant turns: True to train on it, False in-context only. None otherwise."
    )

    @model_validator(mode="after")
    def _loss_only_on_assistant(self) -> Turn:
        if self.role != "assistant" and self.loss:
            raise ValueError(f"a {self.role} turn cannot carry loss=True")
        return self


class Step(_Frozen):
    """One agent step: the reply (Thought + Action), and what the environment answered."""

    thought: str = Field(description="The reasoning before the action ('' if the reply had none).")
    action: str = Field(description="The action text after 'Action:', as the environment received it.")
    observation: str = Field(description="The environment's answer to the action (feedback for invalid ones).")
    reward: float = Field(default=0.0, description="Reward returned by this step.")
    terminated: bool = Field(default=False, description="The task ended at this step (Gymnasium semantics).")
    truncated: bool = Field(default=False, description="The episode was stopped at this step without ending.")
    raw: str | None = Field(
        default=None,
        description="The reply verbatim when it differs from the canonical 'Thought: ..\\nAction: ..' rendering.",
    )
    parse_error: str | None = Field(default=None, description="Why the reply had no parsable action, if so.")
    # written only when set, so records without a note stay byte-identical to (and readable by) earlier versions
    reply_note: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="How the engine changed the policy's reply before acting on it (cut to the size limit, lone "
        "UTF-16 surrogates replaced by U+FFFD), if it did.",
    )

    @property
    def reply(self) -> str:
        """The assistant's reply exactly as the policy produced it."""
        return self.raw if self.raw is not None else render_reply(self.thought, self.action)


class Usage(_Frozen):
    """Token usage summed over an episode's policy calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            requests=self.requests + other.requests,
        )


class Trajectory(_Frozen):
    """A finished episode: the task, who acted, every step, and how it ended."""

    schema_version: int = Field(default=SCHEMA_VERSION, description="Version of this record layout.")
    task: Task = Field(description="The task that was attempted.")
    policy: str = Field(default="", description="Policy spec that acted, e.g. 'openai:gpt-4' or 'expert'.")
    context: list[Turn] = Field(
        default_factory=list,
        description="In-context prefix before the task: instructions, 'Ok.', one-shot example (never trained).",
    )
    initial_observation: str = Field(default="", description="What reset() returned: the task as the agent saw it.")
    steps: list[Step] = Field(default_factory=list, description="Every step, in order.")
    reward: float = Field(description="Final episode reward (the environment's score for the task).")
    success: bool = Field(description="Whether the task counts as solved.")
    end_reason: EndReason = Field(default="done", description="Why the episode ended.")
    usage: Usage = Field(default_factory=Usage, description="Policy token usage over the episode.")
    wall_time_s: float = Field(default=0.0, description="Wall-clock seconds the episode took.")
    env_time_s: float = Field(default=0.0, description="Seconds spent inside the environment (reset/step).")
    policy_time_s: float = Field(default=0.0, description="Seconds spent waiting for the policy's replies.")
    error: str | None = Field(default=None, description="Error message when the episode failed for a technical reason.")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is newer than this agenttuning understands ({SCHEMA_VERSION})")
        return v

    @property
    def id(self) -> str:
        return self.task.id


# --------------------------------------------------------------------------------------------------------------
# Replies: canonical rendering of Thought + Action


def render_reply(thought: str, action: str) -> str:
    """The canonical ReAct reply: ``Thought: ...`` then ``Action: ...`` on its own line."""
    return f"Thought: {thought}\nAction: {action}" if thought else f"Action: {action}"


# --------------------------------------------------------------------------------------------------------------
# Conversions (pure functions)


def conversation(traj: Trajectory) -> list[Turn]:
    """The training conversation derived from a trajectory.

    context turns, then the first observation, then each reply (loss=True) followed by its observation; the final
    observation is dropped, as in the published AgentInstruct data (a conversation ends on the agent's last turn).
    """
    turns = list(traj.context)
    turns.append(Turn(role="user", content=traj.initial_observation))
    for i, step in enumerate(traj.steps):
        turns.append(Turn(role="assistant", content=step.reply, loss=True))
        if i < len(traj.steps) - 1:
            turns.append(Turn(role="user", content=step.observation))
    return turns


def to_openai_messages(turns: list[Turn]) -> list[dict[str, str]]:
    """Turns -> OpenAI chat ``messages`` (the loss flags are not part of that format)."""
    return [{"role": t.role, "content": t.content} for t in turns]


_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower-case, whitespace-collapsed text: the key for comparing instructions across splits."""
    return _WS.sub(" ", text.strip().lower())
