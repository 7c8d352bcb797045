"""The construction table (AgentTuning Table 1): per family and task source, instructions -> verified tasks ->
teacher trajectories -> kept trajectories, their average turns and the keep ratio.

A pure transform of what the run wrote: the tasks the teacher was given, which of them were self-instructed (ids of
the ``instruct`` stage's ``tasks.jsonl``), the instruct stage's counts (how many instructions the teacher was asked
for, how many verified), every teacher trajectory, and the trajectories the filter kept. The pipeline's
``construction`` stage writes it as ``construction.json``; the report shows it.

Definitions (the paper's, where it has one):

- *instructions*: derived tasks: the tasks derived for the teacher; self-instruct: the task drafts the teacher was
  asked for.
- *verified*: tasks that can be played and graded: every derived task (its gold is computed when it is derived, and
  the family's conformance check plays it); self-instructed tasks that passed verification (``instruct`` kept them).
- *trajectories*: teacher episodes on those tasks; *kept*: those the reward filter kept; *mean turns*: agent turns
  per kept trajectory; *keep ratio*: kept / trajectories (the paper: 1,866 of 35,341 over all families).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agenttuning.schema import Task, Trajectory

__all__ = ["ConstructionRow", "ConstructionTable", "Source", "construction_table", "instructed_counts"]

Source = Literal["derived", "self-instruct", "all"]


class ConstructionRow(BaseModel):
    """One family and task source (or ``all``) of the construction table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str
    source: Source
    instructions: int
    verified: int
    trajectories: int
    kept: int
    mean_turns: float
    keep_ratio: float


class ConstructionTable(BaseModel):
    """``construction.json``: the rows, family by family (derived first), then the ``all`` row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: list[ConstructionRow]


def construction_table(tasks: Iterable[Task], trajectories: Iterable[Trajectory], kept: Iterable[Trajectory],
                       instructed: Mapping[str, tuple[int, int]], instructed_ids: set[str]) -> ConstructionTable:  # fmt: skip
    """The table for tasks given to the teacher (``tasks``), its ``trajectories`` and the ``kept`` ones.

    ``instructed`` is ``{env id: (instructions asked for, tasks verified)}`` from the instruct stage, and
    ``instructed_ids`` the ids of the tasks it kept; every other task counts as derived.
    """
    key = lambda task: (task.env, "self-instruct" if task.id in instructed_ids else "derived")  # noqa: E731
    given: dict[tuple[str, str], int] = defaultdict(int)
    for t in tasks:
        given[key(t)] += 1
    ran: dict[tuple[str, str], int] = defaultdict(int)
    for tr in trajectories:
        ran[key(tr.task)] += 1
    kept_n: dict[tuple[str, str], int] = defaultdict(int)
    turns: dict[tuple[str, str], int] = defaultdict(int)
    for tr in kept:
        kept_n[key(tr.task)] += 1
        turns[key(tr.task)] += len(tr.steps)
    groups = set(given) | set(ran) | {(env, "self-instruct") for env in instructed}
    rows = []
    for env, source in sorted(groups, key=lambda g: (g[0], g[1] != "derived")):
        g = (env, source)
        if source == "self-instruct":
            asked, verified = instructed.get(env, (0, given[g]))
        else:
            asked = verified = given[g]
        rows.append(_row(env, source, asked, verified, ran[g], kept_n[g], turns[g]))
    total = lambda field: sum(getattr(r, field) for r in rows)  # noqa: E731
    all_turns = sum(turns.values())
    rows.append(_row("all", "all", total("instructions"), total("verified"), total("trajectories"), total("kept"),
                     all_turns))  # fmt: skip
    return ConstructionTable(rows=rows)


def _row(env: str, source: str, instructions: int, verified: int, trajectories: int, kept: int, turns: int
         ) -> ConstructionRow:  # fmt: skip
    return ConstructionRow(env=env, source=source, instructions=instructions, verified=verified,  # type: ignore[arg-type]
                           trajectories=trajectories, kept=kept, mean_turns=round(turns / kept, 2) if kept else 0.0,
                           keep_ratio=round(kept / trajectories, 4) if trajectories else 0.0)  # fmt: skip


def instructed_counts(runs: Sequence[Mapping[str, object]]) -> dict[str, tuple[int, int]]:
    """``{env id: (asked, kept)}`` summed over instruct runs (each an :class:`~agenttuning.stages.instruct.
    InstructOutput` as JSON)."""
    out: dict[str, tuple[int, int]] = {}
    for r in runs:
        env = str(r["env"])
        asked, kept = out.get(env, (0, 0))
        out[env] = (asked + int(r["asked"]), kept + int(r["kept"]))  # type: ignore[call-overload]
    return out
