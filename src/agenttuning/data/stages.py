"""The data stages, one function each, files in and files out (AgentTuning sections 2.1 and 2.2).

- :func:`build_agentinstruct`: trajectory JSONL -> filter -> decontaminate -> ``<out>/<family>.jsonl`` (AgentInstruct
  layout), ``stats.json``, and ``manifest.json`` written last;
- :func:`mix_datasets`: AgentInstruct + general chat -> decontaminated general data -> one eta-mixed epoch,
  ``train.jsonl`` (:class:`~agenttuning.data.example.Example` records) and ``metrics.json`` written last.

A stage's output is complete only once its last file (the manifest or metrics) exists. A folder output is written
into a fresh folder and swapped in when complete (:mod:`agenttuning.data.outputs`): nothing of an earlier run into
the same folder survives to be read as this run's. A stage that would write no rows fails with the reason
(:class:`~agenttuning.data.outputs.EmptyOutputError`) and leaves the old output untouched.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agenttuning.data.decontam import ContaminationIndex, DecontamResult, decontaminate
from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.filter import PAPER_MIN_REWARD, FilterResult, filter_trajectories
from agenttuning.data.formats import (agentinstruct_schema, read_agentinstruct, read_openai, read_sharegpt,
                                      to_agentinstruct_record, write_agentinstruct, write_examples)  # fmt: skip
from agenttuning.data.mix import epoch_length, premix
from agenttuning.data.outputs import EmptyOutputError, check_inputs, check_output, counts, staged_dir
from agenttuning.data.rows import write_json, write_rows
from agenttuning.jsonl import read_records
from agenttuning.schema import Trajectory

PathLike = str | os.PathLike[str]


def _paths(inputs: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)


def read_trajectories(inputs: PathLike | Sequence[PathLike]) -> list[Trajectory]:
    """Every trajectory in the given JSONL files or directories of them (sorted), validated; RecordError on bad."""
    paths = _paths(inputs)
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return [t for f in files for t in read_records(f, Trajectory)]


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_agentinstruct` did: the filter and decontamination results, and records per family."""

    out_dir: Path
    filter: FilterResult
    decontam: DecontamResult[Trajectory]
    written: dict[str, int]

    @property
    def kept(self) -> int:
        return sum(self.written.values())


def build_agentinstruct(
    inputs: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    *,
    min_reward: float | Mapping[str, float] = PAPER_MIN_REWARD,
    require_success: bool = False,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    index: ContaminationIndex | None = None,
    fmt: Literal["jsonl", "parquet"] = "jsonl",
    overwrite: bool = False,
) -> BuildResult:
    """Trajectories -> AgentInstruct: filter (section 2.1), drop duplicates and test overlap, write per family.

    ``index`` defaults to the test split of every registered environment. An ``out_dir`` ending in ``.jsonl`` or
    ``.parquet`` is one file holding every family instead, with ``<stem>.stats.json`` and ``<stem>.manifest.json``
    beside it. A folder is replaced whole (an earlier ``filter`` output, or anything with ``overwrite``);
    :class:`EmptyOutputError` when no trajectory is kept.
    """
    target = Path(out_dir)
    single = target.suffix in (".jsonl", ".parquet")
    if single:  # one file, replaced atomically: only an input it would overwrite or land in is refused
        check_inputs(target, _paths(inputs), recursive=False)
    else:
        check_output(target, stage="agentinstruct", marker="manifest.json", overwrite=overwrite,
                     inputs=_paths(inputs), recursive=False)  # fmt: skip
    trajs = read_trajectories(inputs)
    filtered = filter_trajectories(
        trajs,
        min_reward=min_reward,
        require_success=require_success,
        max_tokens=max_tokens,
        count_tokens=count_tokens,
    )
    clean = decontaminate(filtered.kept, index)
    if not clean.kept:
        raise EmptyOutputError(_nothing_kept(inputs, len(trajs), filtered, clean))
    if single:
        out = target.parent
        stats_path, manifest_path = out / f"{target.stem}.stats.json", out / f"{target.stem}.manifest.json"
        manifest_path.unlink(missing_ok=True)  # the output is incomplete until the manifest is rewritten
        examples = [from_trajectory(t) for t in clean.kept]
        fmt = "parquet" if target.suffix == ".parquet" else "jsonl"
        write_rows(target, [to_agentinstruct_record(ex) for ex in examples],
                   schema=agentinstruct_schema() if fmt == "parquet" else None)
        written = dict(Counter(ex.family for ex in examples))
        files = {fam: target.name for fam in sorted(written)}
        _write_build_meta(stats_path, manifest_path, filtered, clean, files, written)
    else:
        out = target
        with staged_dir(target) as tmp:
            written = write_agentinstruct(clean.kept, tmp, fmt=fmt)
            files = {fam: f"{fam}.{fmt}" for fam in sorted(written)}
            _write_build_meta(tmp / "stats.json", tmp / "manifest.json", filtered, clean, files, written)
    return BuildResult(out, filtered, clean, written)


def _write_build_meta(stats: Path, manifest: Path, filtered: FilterResult, clean: DecontamResult[Trajectory],
                      files: dict[str, str], written: dict[str, int]) -> None:  # fmt: skip
    write_json(stats, {**filtered.to_json(), "decontam": clean.to_json()})
    write_json(manifest, {"stage": "agentinstruct", "files": files, "records": written})


def _nothing_kept(inputs: PathLike | Sequence[PathLike], n: int, filtered: FilterResult,
                  clean: DecontamResult[Trajectory]) -> str:  # fmt: skip
    where = ", ".join(str(p) for p in _paths(inputs))
    if n == 0:
        return f"no trajectories in {where}: nothing to filter"
    return (f"no trajectory kept of {n} read from {where}: the filter dropped {counts(filtered.dropped)}; "
            f"decontamination dropped {counts(clean.dropped)}")  # fmt: skip


@dataclass(frozen=True)
class MixResult:
    """What :func:`mix_datasets` wrote: sizes of both sources, the mixture, and why general examples were dropped."""

    out: Path  # the train.jsonl written
    n_agent: int
    n_general: int
    n: int
    eta: float
    seed: int
    agent_share: float  # realised fraction of agent examples in the mixture
    general_dropped: Counter[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_agent": self.n_agent, "n_general": self.n_general, "n": self.n, "eta": self.eta, "seed": self.seed,
            "agent_share": self.agent_share, "general_dropped": dict(self.general_dropped),
            "epoch_length": epoch_length(self.n_agent, self.n_general, self.eta),
        }  # fmt: skip


def mix_datasets(
    agent: PathLike,
    general: PathLike | None,
    out_dir: PathLike,
    *,
    eta: float = 0.2,
    n: int | None = None,
    seed: int = 0,
    general_format: Literal["sharegpt", "openai"] = "sharegpt",
    index: ContaminationIndex | None = None,
    overwrite: bool = False,
) -> MixResult:
    """One eta-mixture (section 2.2) of AgentInstruct data and general chat, written as ``<out_dir>/train.jsonl``.

    General data is deduplicated and checked against every test instruction first (``index`` defaults to the
    registry's test splits). ``n`` defaults to one epoch (:func:`~agenttuning.data.mix.epoch_length`). The folder is
    replaced whole (an earlier ``mix`` output, or anything with ``overwrite``); :class:`EmptyOutputError` when a
    source the mixture draws from has no usable example.
    """
    out = Path(out_dir)
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    sources = [agent] if general is None else [agent, general]
    check_output(out, stage="mix", marker="metrics.json", overwrite=overwrite, inputs=sources)
    agent_examples = read_agentinstruct(agent).examples
    general_examples: list[Example] = []
    dropped: Counter[str] = Counter()
    if general is not None:
        loaded = (read_sharegpt if general_format == "sharegpt" else read_openai)(general)
        clean = decontaminate(loaded.examples, index)
        general_examples, dropped = clean.kept, loaded.dropped + clean.dropped
    if eta > 0 and not agent_examples:
        raise EmptyOutputError(f"eta={eta} draws agent examples, but {agent} holds none")
    if eta < 1 and not general_examples:
        why = ("no general data given (pass general data, or eta=1)" if general is None
               else f"no usable general example in {general} (dropped: {counts(dropped)})")  # fmt: skip
        raise EmptyOutputError(f"eta={eta} draws general examples, but there are none: {why}")
    mixed = premix(agent_examples, general_examples, eta, n, seed)
    share = sum(ex.source == "agent" for ex in mixed) / len(mixed) if mixed else 0.0
    result = MixResult(out / "train.jsonl", len(agent_examples), len(general_examples), len(mixed), eta, seed,
                       round(share, 4), dropped)  # fmt: skip
    with staged_dir(out) as tmp:
        write_examples(mixed, tmp / "train.jsonl")
        write_json(tmp / "metrics.json", {"stage": "mix", **result.to_json()})
    return result
