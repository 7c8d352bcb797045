"""The ``kg`` oracle: replies that follow a task's gold plan, and a deliberately wrong reply.

The expert takes the plan's tool calls in order, each with the Thought stored beside it, then answers with the last
variable. It reads only ``history`` to know where it is: every observation that announces a new variable (``#k = ...``)
is one plan step done (it assumes it acted alone, as every expert episode does).
"""

from __future__ import annotations

import re

from agenttuning.envs.kg import data
from agenttuning.schema import Task, Turn

_NEW_VARIABLE = re.compile(r"^#\d+ = ")


def _summary(task: Task, k: int) -> str:
    answer = task.payload["answer"]
    if task.payload["kind"] == "count":
        return f"#{k} = {answer}, which answers the question."
    if len(answer) <= 3:
        names = answer[0] if len(answer) == 1 else ", ".join(answer[:-1]) + f" and {answer[-1]}"
        return f"#{k} holds {names}, which answers the question."
    kind = data.graph().kind[answer[0]]
    return f"#{k} holds the {len(answer)} {data.PLURAL[kind]} that answer the question."


def expert_reply(task: Task, history: list[Turn]) -> str:
    plan = task.payload["plan"]
    done = sum(1 for t in history[1:] if t.role == "user" and _NEW_VARIABLE.match(t.content))
    if done < len(plan):
        return f"Thought: {plan[done]['thought']}\nAction: {plan[done]['action']}"
    last = len(plan) - 1
    return f"Thought: {_summary(task, last)}\nAction: Final Answer: #{last}"


def wrong_reply(task: Task) -> str:
    """Answers at once with the number 0: wrong for every task (gold sets are never empty, gold counts never 0)."""
    return "Thought: I will answer right away without looking at the graph.\nAction: Final Answer: 0"
