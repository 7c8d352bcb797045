"""The ``filter`` stage (AgentTuning section 2.1, "Trajectory Filtering"): trajectories in, the ones worth training
on out, with per-environment statistics.

Story: read every trajectory (validated, ``file:line`` on a bad record) -> keep by reward and the other checks of
:func:`~agenttuning.data.filter.filter_trajectories` -> write ``kept.jsonl`` (the kept trajectories, unchanged) and
``stats.json`` (the construction table's numbers) -> ``manifest.json`` last. Keeping nothing is an error saying
why (:class:`~agenttuning.data.outputs.EmptyOutputError`), and the old folder stays as it was.

``agenttuning filter`` and the pipeline's ``filter`` stage both call :func:`run`; ``decontaminate`` comes next.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.filter import PAPER_MIN_REWARD, filter_trajectories
from agenttuning.data.outputs import EmptyOutputError, counts
from agenttuning.data.rows import write_json
from agenttuning.jsonl import read_records, write_atomic
from agenttuning.schema import Trajectory
from agenttuning.stages.folder import stage_folder
from agenttuning.stages.manifest import StageResult

__all__ = ["FilterConfig", "FilterOutput", "read_trajectories", "run"]

PathLike = str | os.PathLike[str]
KEPT = "kept.jsonl"
STATS = "stats.json"


class FilterConfig(BaseModel):
    """What to keep (the paper: reward 1 everywhere, 2/3 for Mind2Web)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="False keeps every trajectory (the paper's 'unfiltered' ablation).")
    min_reward: float | dict[str, float] = Field(
        default_factory=lambda: dict(PAPER_MIN_REWARD),
        description="Keep threshold: a number for every family, or {family: value} with '*' for the rest.")
    require_success: bool = Field(False, description="Also require the environment's success flag.")
    max_tokens: int | None = Field(None, ge=1, description="Drop longer conversations (approximate tokens).")


class FilterOutput(StageResult):
    """What :func:`run` wrote (names relative to the stage folder) and counted."""

    kept: str = KEPT
    stats: str = STATS
    total: int
    n_kept: int
    dropped: dict[str, int]


def read_trajectories(inputs: PathLike | Sequence[PathLike]) -> list[Trajectory]:
    """Every trajectory in the given JSONL files or folders of them (``*.jsonl``, sorted), validated."""
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return [t for f in files for t in read_records(f, Trajectory)]


def run(config: FilterConfig, inputs: Sequence[PathLike], out: PathLike, *, overwrite: bool = False
        ) -> FilterOutput:  # fmt: skip
    """Filter the trajectories in ``inputs`` (files or folders of ``*.jsonl``) into the folder ``out``."""
    paths = list(inputs)
    with stage_folder(out, stage="filter", inputs=paths, overwrite=overwrite, recursive=False) as w:
        trajs = read_trajectories(paths)
        result = filter_trajectories(
            trajs,
            min_reward=config.min_reward if config.enabled else float("-inf"),
            require_success=config.require_success and config.enabled,
            max_tokens=config.max_tokens,
        )
        if not result.kept:
            where = ", ".join(str(p) for p in paths)
            why = "nothing to filter" if not trajs else f"dropped: {counts(result.dropped)}"
            raise EmptyOutputError(f"filter: no trajectory kept of {len(trajs)} read from {where} ({why})")
        write_atomic(w.path / KEPT, result.kept)
        write_json(w.path / STATS, result.to_json())
        output = FilterOutput(total=result.total.total, n_kept=result.total.kept, dropped=dict(result.dropped))
        w.finish(config=config, inputs={"trajectories": [str(p) for p in paths]}, result=output)
    return output

