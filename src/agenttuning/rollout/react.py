"""ReAct replies (Yao et al., 2023; AgentTuning section 2.1): every step is a *Thought* and then an *Action*.

Pure functions: parse a model's reply into (thought, action) tolerantly, and build the message list an agent sees.

Parsing is tolerant in the ways models actually err: any case for ``Thought:``/``Action:``, markdown emphasis
around the markers (``**Action:**``), a missing ``Thought:`` label (the text before ``Action:`` is the thought),
and a reply that runs on to invent the environment's answer (text from a following ``Observation:`` is cut).
A reply with no ``Action:`` or an empty action raises :class:`ParseError`; the engine turns that into the
environment's invalid-action feedback.

Replies are adversarial data, so parsing takes linear time on any input: a marker counts only at the start of a
line, after nothing but markdown marks and whitespace, and that condition is checked once per candidate, never by a
pattern that rescans the marks from every line start (which was quadratic on many lines of ``*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agenttuning.schema import Step, Task, Trajectory, Turn, render_reply

_MARK = r"[*_#\s]*"
_MARKS_ONLY = re.compile(_MARK)
# candidates: a keyword and its colon; whether it starts a line is checked separately (:func:`_at_line_start`)
_ACTION = re.compile(rf"action{_MARK}:", re.IGNORECASE)
_THOUGHT = re.compile(rf"{_MARK}thought{_MARK}:[*_\s]*", re.IGNORECASE)
# a model that keeps going and writes the environment's reply itself
_RUN_ON = re.compile(rf"(?:observation|thought){_MARK}:", re.IGNORECASE)


class ParseError(ValueError):
    """The reply holds no usable action."""


@dataclass(frozen=True)
class Parsed:
    thought: str
    action: str


def _at_line_start(pattern: re.Pattern[str], text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the first ``pattern`` match that only marks and whitespace precede on its line.

    ``start`` is where the marks before it begin: the earliest line start from which nothing but marks (newlines
    included) leads to the match, as ``^[*_#\\s]*`` under MULTILINE would find it. Linear time: each candidate looks
    only at the text since the previous one (an earlier candidate on the same line disqualifies it at once), and the
    backward walk over the marks runs once, for the winner.
    """
    prev_end = 0
    for m in pattern.finditer(text):
        p = m.start()
        nl = text.rfind("\n", prev_end, p)
        if nl < 0 and prev_end > 0:
            prev_end = m.end()  # same line as an earlier candidate, whose letters are not marks
            continue
        line_start = nl + 1  # 0 when no newline precedes p at all
        prev_end = m.end()
        if _MARKS_ONLY.match(text, line_start, p).end() != p:
            continue
        # walk back over mark-only lines above: the match starts at the first line start of that run of marks
        before = text[line_start - 1 :: -1] if line_start else ""
        q = line_start - _MARKS_ONLY.match(before).end()
        start = 0 if q == 0 else text.index("\n", q) + 1
        return start, m.end()
    return None


def parse_reply(text: str) -> Parsed:
    """Split a reply into thought and action.

    >>> parse_reply("Thought: look first\\nAction: Operation")
    Parsed(thought='look first', action='Operation')
    >>> parse_reply("I should answer.\\n**Action:** Answer\\nObservation: made up")
    Parsed(thought='I should answer.', action='Answer')
    """
    found = _at_line_start(_ACTION, text)
    if found is None:
        raise ParseError("no 'Action:' found in the reply")
    start, end = found
    head = text[:start].strip()
    m = _THOUGHT.match(head)
    thought = (head[m.end() :] if m else head).strip()
    action = text[_MARKS_ONLY.match(text, end).end() :]
    run_on = _at_line_start(_RUN_ON, action)
    if run_on is not None:
        action = action[: run_on[0]]
    action = action.strip()
    if not action:
        raise ParseError("the 'Action:' is empty")
    return Parsed(thought=thought, action=action)


def step_from_reply(reply: str, *, observation: str, parsed: Parsed | ParseError | None = None, **fields: Any) -> Step:
    """A Step for a reply, keeping the verbatim text only when it differs from the canonical rendering.

    An unparsable reply becomes a Step whose thought is the whole reply, with no action and its ``parse_error``.
    ``parsed``: the reply's :func:`parse_reply` result when the caller already has it (the engine parses before it
    acts, and the observation comes after), so a reply is parsed once.

    >>> step_from_reply("Thought: a\\nAction: b", observation="o").raw is None
    True
    """
    if parsed is None:
        try:
            parsed = parse_reply(reply)
        except ParseError as e:
            parsed = e
    if isinstance(parsed, ParseError):
        thought, action, error = reply, "", str(parsed)
    else:
        thought, action, error = parsed.thought, parsed.action, None
    raw = None if error is None and render_reply(thought, action) == reply else reply
    return Step(thought=thought, action=action, observation=observation, raw=raw, parse_error=error, **fields)


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
