"""The one in-memory training example every data stage passes around (AgentTuning section 2).

An :class:`Example` is a conversation with per-turn loss flags, tagged with where it came from: ``source`` is
``"agent"`` for AgentInstruct interaction trajectories and ``"general"`` for general-domain chat (ShareGPT), the two
halves that hybrid instruction tuning mixes (section 2.2); ``family`` is the task family (``db``, ``os``, ...) or the
general corpus's name. Agent examples are derived from trajectories with :func:`agenttuning.schema.conversation`,
never stored twice.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agenttuning.schema import Trajectory, Turn, conversation

Source = Literal["agent", "general"]
_VERSION = re.compile(r"-v\d+$")


class Example(BaseModel):
    """A training conversation: every assistant turn says whether it is trained (``loss``), other turns hold None.

    >>> ex = Example(id="x", source="general", family="sharegpt",
    ...              turns=[Turn(role="user", content="hi"), Turn(role="assistant", content="hello", loss=True)])
    >>> ex.n_trained
    1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Task id for agent data (e.g. 'db-train-00007'), the record id for general data.")
    source: Source = Field(description="'agent' (AgentInstruct trajectories) or 'general' (general chat data).")
    family: str = Field(description="Task family ('db', 'os', ...) or general corpus name ('sharegpt').")
    turns: list[Turn] = Field(description="The conversation, in order, with its loss flags.")

    @model_validator(mode="after")
    def _trainable(self) -> Example:
        if not self.turns:
            raise ValueError("an example needs at least one turn")
        for i, t in enumerate(self.turns):
            if t.role == "assistant" and t.loss is None:
                raise ValueError(f"turns[{i}]: an assistant turn needs loss true or false")
        if not any(t.loss for t in self.turns):
            raise ValueError("an example needs at least one trained assistant turn (loss true)")
        return self

    @property
    def n_trained(self) -> int:
        """Number of trained assistant turns."""
        return sum(bool(t.loss) for t in self.turns)

    def text(self) -> str:
        """The conversation's text, turns joined by newlines (what token budgets and dedup keys read)."""
        return "\n".join(t.content for t in self.turns)


def family_of(env_id: str) -> str:
    """Family name of a versioned environment id: ``'db-v1' -> 'db'``.

    >>> family_of("db-v1"), family_of("mind2web")
    ('db', 'mind2web')
    """
    return _VERSION.sub("", env_id)


def from_trajectory(traj: Trajectory) -> Example:
    """A trajectory's training example: its derived conversation, id = task id, family = the env without -vN."""
    return Example(id=traj.task.id, source="agent", family=family_of(traj.task.env), turns=conversation(traj))


def task_turn(turns: list[Turn]) -> int | None:
    """Index of the task turn: the user turn just before the first trained assistant turn (after the context).

    In AgentInstruct the in-context prefix (instructions, 'Ok.', one-shot example) comes first; the task is the
    user turn the first trained reply answers. None when no trained turn follows a user turn.
    """
    for i, t in enumerate(turns):
        if t.role == "assistant" and t.loss:
            return i - 1 if i > 0 and turns[i - 1].role == "user" else None
    return None
