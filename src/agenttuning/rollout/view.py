"""A readable, coloured view of trajectories for the terminal (``agenttuning show``)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from agenttuning.schema import Trajectory


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def render_trajectory(traj: Trajectory, *, max_chars: int = 1500, show_context: bool = False) -> RenderableType:
    """One trajectory as a panel: the task, then each Thought / Action / Observation, then the outcome."""
    parts: list[RenderableType] = []
    if show_context:
        for turn in traj.context:
            style = "dim cyan" if turn.role == "user" else "dim magenta"
            parts.append(Text(f"[{turn.role}] ", style="bold " + style) + Text(_clip(turn.content, max_chars), style))
    parts.append(Text("Task ", style="bold cyan") + Text(_clip(traj.initial_observation, max_chars)))
    for i, s in enumerate(traj.steps, 1):
        parts.append(Text(f"── step {i} ", style="dim"))
        if s.parse_error:
            parts.append(Text("Unparsable reply: ", style="bold red") + Text(_clip(s.reply, max_chars), "red"))
        else:
            if s.thought:
                parts.append(Text("Thought ", style="bold yellow") + Text(_clip(s.thought, max_chars), "yellow"))
            parts.append(Text("Action ", style="bold magenta") + Text(_clip(s.action, max_chars), "magenta"))
        if s.reply_note:
            parts.append(Text(f"(reply {s.reply_note})", style="dim red"))
        flags = [f for f, on in (("terminated", s.terminated), ("truncated", s.truncated)) if on]
        tail = f"  (reward {s.reward:g}{', ' + ', '.join(flags) if flags else ''})"
        parts.append(Text("Observation ", style="bold blue") + Text(_clip(s.observation, max_chars)) + Text(tail, "dim"))
    outcome = "SUCCESS" if traj.success else "FAIL"
    colour = "green" if traj.success else "red"
    footer = f"{outcome}  reward {traj.reward:g}  ended: {traj.end_reason}  steps {len(traj.steps)}"
    footer += f"  {traj.wall_time_s:.2f}s"
    if traj.usage.requests:
        footer += f"  tokens {traj.usage.prompt_tokens}+{traj.usage.completion_tokens}"
    parts.append(Text(footer, style=f"bold {colour}"))
    if traj.error:
        parts.append(Text(f"error: {traj.error}", style="red"))
    title = escape(f"{traj.task.id}  [{traj.task.env}]  policy {traj.policy or '?'}")
    return Panel(Group(*parts), title=title, border_style=colour, title_align="left")
