"""ReAct replies (Yao et al., 2023; AgentTuning section 2.1): every step is a *Thought* and then an *Action*.

Pure functions: parse a model's reply into (thought, action) tolerantly, and build the message list an agent sees.

Parsing is tolerant in the ways models actually err: any case for ``Thought:``/``Action:``, markdown emphasis
around the markers (``**Action:**``), a missing ``Thought:`` label (the text before ``Action:`` is the thought),
and a reply that runs on to invent the environment's answer (text from a following ``Observation:`` is cut).
A reply with no ``Action:`` or an empty action raises :class:`ParseError`; the engine turns that into the
environment's invalid-action feedback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agenttuning.schema import Step, Task, Trajectory, Turn

_MARK = r"[*_#\s]*"
_ACTION = re.compile(rf"^{_MARK}action{_MARK}:{_MARK}", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(rf"^{_MARK}thought{_MARK}:[*_\s]*", re.IGNORECASE)
# a model that keeps going and writes the environment's reply itself
_RUN_ON = re.compile(rf"^{_MARK}(observation|thought){_MARK}:", re.IGNORECASE | re.MULTILINE)


class ParseError(ValueError):
    """The reply holds no usable action."""


@dataclass(frozen=True)
class Parsed:
    thought: str
    action: str


def parse_reply(text: str) -> Parsed:
    """Split a reply into thought and action.

    >>> parse_reply("Thought: look first\\nAction: Operation")
    Parsed(thought='look first', action='Operation')
    >>> parse_reply("I should answer.\\n**Action:** Answer\\nObservation: made up")
    Parsed(thought='I should answer.', action='Answer')
    """
    m = _ACTION.search(text)
    if m is None:
        raise ParseError("no 'Action:' found in the reply")
    thought = _THOUGHT.sub("", text[: m.start()].strip(), count=1).strip()
    action = text[m.end() :]
    run_on = _RUN_ON.search(action)
    if run_on is not None:
        action = action[: run_on.start()]
    action = action.strip()
    if not action:
        raise ParseError("the 'Action:' is empty")
    return Parsed(thought=thought, action=action)


def history(traj_or_steps: Trajectory | list[Step], initial_observation: str | None = None) -> list[Turn]:
    """Turns after the context: the task observation, then each reply and its observation (ends on a user turn)."""
    if isinstance(traj_or_steps, Trajectory):
        steps, first = traj_or_steps.steps, traj_or_steps.initial_observation
    else:
        steps, first = traj_or_steps, initial_observation or ""
    # model_construct: the texts come from validated Steps; re-validating them every turn is the engine's hot path
    turns = [Turn.model_construct(role="user", content=first, loss=None)]
    for s in steps:
        turns.append(Turn.model_construct(role="assistant", content=s.reply, loss=True))
        turns.append(Turn.model_construct(role="user", content=s.observation, loss=None))
    return turns


def messages_for(context: list[Turn], task_observation: str, steps: list[Step]) -> list[Turn]:
    """Everything the agent sees before its next reply: context, then :func:`history`."""
    return list(context) + history(steps, task_observation)


def task_line(task: Task) -> str:
    """A one-line label for logs and tables."""
    text = task.instruction.replace("\n", " ")
    return f"{task.id}: {text[:80]}{'…' if len(text) > 80 else ''}"
