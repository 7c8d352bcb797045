"""The wire records of ``agenttuning env-serve``: AgentGym's environment-server protocol, plus our metadata.

AgentGym's ``agentenv-*`` servers (TextCraft, BabyAI, SciWorld, ALFWorld, WebShop ...) all run one pattern: a
process holds many environment instances under integer ids, and a client drives one of them with ``POST /create``,
``POST /reset {"id", "data_idx"}``, ``POST /step {"id", "action"}``, ``GET /observation?id=`` and
``POST /close {"id"}``. ``env-serve`` speaks exactly that core, so an AgentGym-style client can drive any of our
families, and adds what our own client needs to make a remote copy of a family that is the same as the local one:

- ``GET /info``: identity, turn budget, prompts, the index range of each split (tasks are numbered train first,
  then test, in one index space, as AgentGym's ALFWorld server numbers its train then test games);
- ``GET /tasks``: every task's index, id, split and instruction (never its payload: gold answers stay on the server);
- ``POST /expert`` and ``POST /wrong_answer``: the family's oracle and wrong reply for a task (our extension, so
  the conformance checker and the expert can run against a remote copy).

A step's response carries AgentGym's ``observation``/``reward``/``done`` and our typed outcome fields
(``terminated``, ``truncated``, ``success``, ``invalid``, ``info``), so nothing is lost on the way. Errors come
back with an HTTP status (400 bad request, 404 unknown id or route, 413 body too large, 503 no free instance, 500
the environment raised) and a body ``{"error": message}``: AgentGym's servers answer errors the same way but with
status 200, which our client also understands (see :mod:`agenttuning.envs.remote.flavors`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.schema import Turn

#: the protocol version our server announces in /info; a client refuses a server of another major version
PROTOCOL = "agenttuning-env/1"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)  # unknown keys are ignored, as AgentGym's pydantic models ignore them


class CreateResponse(_Record):
    id: int = Field(description="The new instance's id: name it in every later call.")


class IdRequest(_Record):
    """``POST /close``: the instance to free."""

    id: int


class ResetRequest(_Record):
    id: int
    data_idx: int = Field(ge=0, description="The task's index: train tasks first, then test (see /info).")


class ResetResponse(_Record):
    id: int
    observation: str = Field(description="The first observation: the task as the agent sees it.")
    reward: float = 0.0
    done: bool = False
    task_id: str
    split: str
    instruction: str


class StepRequest(_Record):
    id: int
    action: str = Field(description="The action text (what follows 'Action:' in the agent's reply).")


class StepResponse(_Record):
    observation: str
    reward: float
    done: bool = Field(description="AgentGym's flag: terminated or truncated.")
    terminated: bool
    truncated: bool
    success: bool | None = None
    invalid: bool = False
    info: dict[str, Any] = Field(default_factory=dict)


class IndexRange(_Record):
    start: int = Field(ge=0)
    stop: int = Field(ge=0, description="One past the last index.")


class EnvInfo(_Record):
    """``GET /info``: what a client needs to present the served family as its own."""

    protocol: str = PROTOCOL
    name: str
    version: int
    id: str
    description: str = ""
    max_turns: int
    held_out: bool = False
    test_sample: int | None = None
    system_prompt: str
    one_shot: list[Turn] = Field(default_factory=list)
    #: the family's invalid-action feedback with the reason replaced by :data:`REASON_SLOT`
    invalid_action: str
    splits: dict[str, IndexRange]
    expert: bool = Field(True, description="Whether /expert and /wrong_answer are served.")
    unavailable: str | None = Field(None, description="The family's unavailable_reason() on the server's machine.")


#: stands for the reason in :attr:`EnvInfo.invalid_action` (a text no family's feedback holds by itself)
REASON_SLOT = "\x00reason\x00"


class TaskEntry(_Record):
    data_idx: int
    id: str
    split: str
    instruction: str


class TaskList(_Record):
    tasks: list[TaskEntry]


class ExpertRequest(_Record):
    data_idx: int = Field(ge=0)
    history: list[Turn] = Field(default_factory=list, description="The turns after the context, as in expert().")


class ReplyResponse(_Record):
    reply: str
