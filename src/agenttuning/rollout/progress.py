"""Live progress and the end-of-run summary for rollouts (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agenttuning.rollout.engine import RolloutSummary
from agenttuning.schema import Trajectory


class RolloutProgress:
    """A progress bar with the live success rate; pass ``on_start``/``on_result`` to the engine."""

    def __init__(self, label: str, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("success [green]{task.fields[rate]}"),
            TextColumn("{task.fields[eps]} ep/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.label = label
        self._task = None

    def __enter__(self) -> RolloutProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def on_start(self, total: int, skipped: int) -> None:
        self._task = self.progress.add_task(self.label, total=total, completed=skipped, rate="-", eps="-")

    def on_result(self, traj: Trajectory, summary: RolloutSummary) -> None:
        assert self._task is not None
        current = next(t for t in self.progress.tasks if t.id == self._task)
        elapsed = current.elapsed or 1e-9
        self.progress.update(
            self._task,
            advance=1,
            rate=f"{summary.success_rate:6.1%}",
            eps=f"{summary.finished / elapsed:.1f}",
        )


def summary_table(summary: RolloutSummary, title: str = "rollout") -> Table:
    """The end-of-run table: counts, success, reward, why episodes ended, tokens, time split."""
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("tasks in scope", str(summary.total))
    t.add_row("skipped (already done)", str(summary.skipped))
    t.add_row("finished now", str(summary.finished))
    t.add_row("success rate", f"{summary.success_rate:.1%}")
    t.add_row("mean reward", f"{summary.mean_reward:.3f}")
    for reason, n in sorted(summary.end_reasons.items()):
        t.add_row(f"ended: {reason}", str(n))
    t.add_row("steps", str(summary.steps))
    if summary.usage.requests:
        t.add_row("tokens (prompt / completion)", f"{summary.usage.prompt_tokens} / {summary.usage.completion_tokens}")
    t.add_row("wall time", f"{summary.wall_time_s:.2f} s")
    if summary.wall_time_s > 0:
        t.add_row("episodes / s", f"{summary.finished / summary.wall_time_s:.1f}")
    return t
