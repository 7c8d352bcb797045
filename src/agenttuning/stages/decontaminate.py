"""The ``decontaminate`` stage: drop duplicates and anything overlapping a test task, write the AgentInstruct layout.

Story: read the inputs (trajectories, such as a ``filter`` output, or examples in any layout the reader knows) ->
:func:`~agenttuning.data.decontam.decontaminate` against the test split of every registered environment (same id,
same instruction, or a shared 10-gram; duplicates keep the first) -> write one file per family, agent data in the
published AgentInstruct layout (``<family>.jsonl``: conversations with a per-turn ``loss`` flag), general chat in
the ShareGPT layout -> ``stats.json`` -> ``manifest.json`` last.

When an input is a ``filter`` output folder, its statistics are carried into ``stats.json`` beside the
decontamination counts, so one file holds the construction table (filter rows per environment, then what
decontamination dropped). ``agenttuning decontaminate`` and the pipeline's stage both call :func:`run`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.decontam import ContaminationIndex, decontaminate
from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.formats import write_agentinstruct, write_sharegpt
from agenttuning.data.outputs import EmptyOutputError, counts
from agenttuning.data.rows import write_json
from agenttuning.schema import Trajectory
from agenttuning.stages.folder import stage_folder
from agenttuning.stages.manifest import StageResult, read_stage_manifest

__all__ = ["DecontaminateConfig", "DecontaminateOutput", "run"]

PathLike = str | os.PathLike[str]
STATS = "stats.json"


class DecontaminateConfig(BaseModel):
    """Whether to decontaminate (off: only convert and write, the ablation), and the files' format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Drop duplicates and anything overlapping a test task.")
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="Format of the per-family files.")


class DecontaminateOutput(StageResult):
    """What :func:`run` wrote: files per family (relative names), records per family, drops by reason."""

    files: dict[str, str]
    records: dict[str, int]
    n: int
    dropped: dict[str, int]
    stats: str = STATS


def _read(paths: Sequence[PathLike]) -> tuple[list[Trajectory | Example], Counter[str]]:
    """Trajectories stay trajectories (decontamination compares their task instruction); the rest via the reader."""
    from agenttuning.data.reader import detect_layout, read_data
    from agenttuning.data.rows import first_row
    from agenttuning.stages.filter import read_trajectories

    items: list[Trajectory | Example] = []
    dropped: Counter[str] = Counter()
    for p in paths:
        first = first_row(p) if Path(p).exists() else None
        if first is not None and isinstance(first[3], dict) and _is_trajectory(first[3], detect_layout):
            items += read_trajectories(p)
        else:
            loaded = read_data(p)
            items += loaded.examples
            dropped += Counter(loaded.dropped)
    return items, dropped


def _is_trajectory(record: dict[str, Any], detect: Any) -> bool:
    try:
        return detect(record) == "trajectories"
    except ValueError:  # not a layout at all: the reader says so, with the file and line
        return False


def _carried_stats(paths: Sequence[PathLike]) -> dict[str, Any]:
    """The statistics of a ``filter`` output given as input (none: empty)."""
    for p in paths:
        m = read_stage_manifest(p) if Path(p).is_dir() else None
        if m is not None and m.stage == "filter":
            return json.loads((Path(p) / m.result["stats"]).read_text(encoding="utf-8"))
    return {}


def run(config: DecontaminateConfig, inputs: Sequence[PathLike], out: PathLike, *,
        index: ContaminationIndex | None = None, overwrite: bool = False) -> DecontaminateOutput:  # fmt: skip
    """Decontaminate ``inputs`` into the folder ``out``; ``index`` defaults to every registered test split."""
    paths = list(inputs)
    with stage_folder(out, stage="decontaminate", inputs=paths, overwrite=overwrite) as w:
        items, unreadable = _read(paths)
        if config.enabled:
            clean = decontaminate(items, index)
            kept, dropped, report = clean.kept, clean.dropped + unreadable, clean.to_json()
        else:
            kept, dropped, report = items, unreadable, {"enabled": False}
        if not kept:
            where = ", ".join(str(p) for p in paths)
            why = "nothing to decontaminate" if not items else f"dropped: {counts(dropped)}"
            raise EmptyOutputError(f"decontaminate: nothing kept of {len(items)} read from {where} ({why})")
        examples = [from_trajectory(t) if isinstance(t, Trajectory) else t for t in kept]
        agent = [ex for ex in examples if ex.source == "agent"]
        records = write_agentinstruct(agent, w.path, fmt=config.format) if agent else {}
        for family in sorted({ex.family for ex in examples if ex.source == "general"}):
            if family in records:
                raise ValueError(f"decontaminate: family {family!r} is both agent and general data")
            general = [ex for ex in examples if ex.source == "general" and ex.family == family]
            if config.format == "parquet":
                raise ValueError("decontaminate: general chat is written as ShareGPT JSONL; use format=jsonl")
            records[family] = write_sharegpt(general, w.path / f"{family}.jsonl")
        write_json(w.path / STATS, {**_carried_stats(paths), "decontam": report})
        output = DecontaminateOutput(files={f: f"{f}.{config.format}" for f in sorted(records)},
                                     records=dict(sorted(records.items())), n=len(examples),
                                     dropped=dict(sorted(dropped.items())))  # fmt: skip
        w.finish(config=config, inputs={"data": [str(p) for p in paths]}, result=output)
    return output
