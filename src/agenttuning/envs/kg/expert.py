"""The ``kg`` oracle: replies that follow a task's gold plan, and a deliberately wrong reply.

The expert takes the plan's tool calls in order, each with the Thought stored beside it, then answers with the last
variable. It reads only ``history`` to know where it is: every observation that announces a new variable (``#k = ...``)
is one plan step done (it assumes it acted alone, as every expert episode does).
"""

from __future__ import annotations

import re

from agenttuning.envs.kg import data
from agenttuning.envs.kg.payload import KgPayload
from agenttuning.schema import Turn

_NEW_VARIABLE = re.compile(r"^#\d+ = ")


def _summary(p: KgPayload, k: int) -> str:
    if isinstance(p.answer, int):
        return f"#{k} = {p.answer}, which answers the question."
    if len(p.answer) <= 3:
        names = p.answer[0] if len(p.answer) == 1 else ", ".join(p.answer[:-1]) + f" and {p.answer[-1]}"
        return f"#{k} holds {names}, which answers the question."
    kind = data.graph().kind[p.answer[0]]
    return f"#{k} holds the {len(p.answer)} {data.PLURAL[kind]} that answer the question."


def expert_reply(p: KgPayload, history: list[Turn]) -> str:
    """The next reply for a task with payload ``p``: the next step of its plan, or the answer once it is done."""
    done = sum(1 for t in history[1:] if t.role == "user" and _NEW_VARIABLE.match(t.content))
    if done < len(p.plan):
        return f"Thought: {p.plan[done].thought}\nAction: {p.plan[done].action}"
    last = len(p.plan) - 1
    return f"Thought: {_summary(p, last)}\nAction: Final Answer: #{last}"


def wrong_reply() -> str:
    """Answers at once with the number 0: wrong for every task (gold sets are never empty, gold counts never 0)."""
    return "Thought: I will answer right away without looking at the graph.\nAction: Final Answer: 0"
