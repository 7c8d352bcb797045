"""What a report is built from, and the readers of every file it takes (files only: never logs, never the console).

:class:`ReportInputs` names the files; the ``load_*`` functions read and check them. A file that is absent where it
is required, not JSON, or not of the expected shape raises :class:`ReportInputError` naming the file (and the line
for JSONL), so a broken run is pointed at rather than drawn as an empty plot. Optional inputs that are not given
simply leave their section of the report out.

A report spec file (YAML or JSON, :func:`load_report_inputs`) holds the same fields, with paths relative to the
spec file::

    title: AgentTuning on db, Llama-3.2-1B
    agent: {base: eval/base, tuned: eval/tuned}           # results.json files or their directories; first = before
    general: {base: eval/base-general.json, tuned: eval/tuned-general.json}
    data_stats: data/agentinstruct/stats.json
    construction: construction/construction.json            # the construction table (Table 1 of the paper)
    mix: data/mix/metrics.json
    train_metrics: out/tuned/metrics.jsonl
    teacher_trajectories: [runs/db.jsonl]
    sweep: [{label: "eta=0.2", eta: 0.2, filtered: true, agent: sweep/eta0.2/eval, general: sweep/eta0.2/general.json}]
    normalisers: normalisers.json
    provenance: {teacher: "openai:gpt-4o", machine: "1x H100"}
    notes: ["A 1B model ..."]
    viewer_per_env: 10
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agenttuning.data.construction import ConstructionTable
from agenttuning.eval.agent import RESULTS_FILE, AgentEvalResult
from agenttuning.eval.general import GeneralEvalResult
from agenttuning.jsonl import RecordError, iter_json, read_records
from agenttuning.schema import Trajectory

__all__ = [
    "ReportInputError",
    "ReportInputs",
    "SweepPoint",
    "TrainCurves",
    "load_agent",
    "load_construction",
    "load_data_stats",
    "load_general",
    "load_mix",
    "load_report_inputs",
    "load_train_metrics",
    "load_trajectories",
    "trajectories_path",
]

Metric = Literal["mean_reward", "success_rate"]


class ReportInputError(ValueError):
    """An input file of the report is missing or malformed; the message starts with the file."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class SweepPoint:
    """One variant of ``agenttuning sweep``: a model tuned at mixture ratio ``eta``, on filtered data or not."""

    label: str  # e.g. "eta=0.2", "eta=0.2 unfiltered"
    eta: float
    filtered: bool
    agent: Path  # its tuned model's results.json (or the directory holding it)
    general: Path | None = None  # its tuned model's general-eval JSON (GeneralEvalResult.to_dict())


@dataclass(frozen=True)
class ReportInputs:
    """Every file a report reads. Only ``title`` and ``agent`` are required.

    ``agent`` is ordered: the first model is the one *before* tuning (the base), the last the one *after* (tuned);
    models in between (other checkpoints, baselines) appear in the per-model tables and plots.
    """

    title: str
    agent: dict[str, Path]  # model label -> results.json (or its directory)
    general: dict[str, Path] = field(default_factory=dict)  # model label -> GeneralEvalResult.to_dict() JSON
    data_stats: Path | None = None  # stats.json of the decontaminate stage (filter + decontamination)
    construction: Path | None = None  # construction.json (agenttuning.data.construction): Table 1 of the paper
    mix: Path | None = None  # metrics.json of the mix stage
    train_metrics: Path | None = None  # metrics.jsonl of the training run
    teacher_trajectories: list[Path] = field(default_factory=list)  # teacher rollout JSONL files
    sweep: list[SweepPoint] = field(default_factory=list)
    normalisers: Path | None = None  # fixed {env_id: value} normalisers (else: the mean over the models compared)
    provenance: dict[str, str] = field(default_factory=dict)  # shown as a table, in this order
    notes: list[str] = field(default_factory=list)  # free-text paragraphs
    metric: Metric = "mean_reward"  # the per-task score the overall score is computed from (as eval.score)
    viewer_per_env: int = 10  # trajectories embedded in trajectories.html per (source, environment)
    viewer_max_chars: int = 4000  # longer texts are clipped there (marked)

    def __post_init__(self) -> None:
        if not self.agent:
            raise ValueError("ReportInputs.agent needs at least one model's results")
        if self.viewer_per_env < 1 or self.viewer_max_chars < 1:
            raise ValueError("viewer_per_env and viewer_max_chars must be >= 1")
        if self.metric not in ("mean_reward", "success_rate"):
            raise ValueError(f"metric must be 'mean_reward' or 'success_rate', not {self.metric!r}")
        unknown = sorted(set(self.general) - set(self.agent))
        if unknown:
            raise ValueError(f"general results for models not in agent: {unknown}")

    @property
    def base(self) -> str:
        return next(iter(self.agent))

    @property
    def tuned(self) -> str:
        return list(self.agent)[-1]


# ------------------------------------------------------------------------------------------------------------
# Readers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(path, "not found") from None
    except OSError as e:
        raise ReportInputError(path, f"cannot be read ({e.strerror})") from None


def _read_json(path: Path) -> Any:
    """A JSON file whose shape is checked by hand (files not written from one of our result types)."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportInputError(path, f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


ResultT = TypeVar("ResultT", bound=BaseModel)


_PROBLEMS_SHOWN = 3


def _read_result(path: Path, model: type[ResultT], what: str) -> ResultT:
    """A file written from ``model``, read back with ``model.model_validate_json``; a ReportInputError names the
    file and says what is wrong (invalid JSON: where; otherwise the first few fields that do not fit)."""
    text = _read_text(path)
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        errors = e.errors()
        if errors[0]["type"] == "json_invalid":  # "... at line L column C"
            raise ReportInputError(path, f"invalid JSON: {errors[0].get('ctx', {}).get('error', '')}") from None
        problems = [f"{'.'.join(str(x) for x in err['loc']) or 'record'}: {err['msg']}"
                    for err in errors[:_PROBLEMS_SHOWN]]  # fmt: skip
        if len(errors) > _PROBLEMS_SHOWN:
            problems.append(f"{len(errors) - _PROBLEMS_SHOWN} more")
        raise ReportInputError(path, f"not {what}: {'; '.join(problems)}") from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_agent(path: str | os.PathLike[str]) -> tuple[AgentEvalResult, Path]:
    """An agent ``results.json`` (or the directory holding it), and the directory its trajectory paths are under."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    return _read_result(p, AgentEvalResult, "an agent results file"), p.parent


def load_general(path: str | os.PathLike[str]) -> dict[str, float]:
    """A general-eval JSON (:func:`~agenttuning.eval.general.save_general_result`, or ``GeneralEvalResult.to_dict()``)
    read as a :class:`~agenttuning.eval.general.GeneralEvalResult`: its numeric fields, in field order (``details``
    left out)."""
    result = _read_result(Path(path), GeneralEvalResult, "a general-eval result")
    return {k: float(v) for k, v in result.to_dict().items()}


def load_construction(path: str | os.PathLike[str]) -> ConstructionTable:
    """``construction.json`` (:class:`~agenttuning.data.construction.ConstructionTable`), validated."""
    return _read_result(Path(path), ConstructionTable, "a construction table")


def load_data_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``stats.json`` of :func:`agenttuning.stages.decontaminate.run`: filter rows per env, decontam counts."""
    p = Path(path)
    data = _read_json(p)
    rows = data.get("envs") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ReportInputError(p, "not a filter stats file: no 'envs' rows")
    for i, row in enumerate(rows):
        ok = isinstance(row, dict) and isinstance(row.get("env"), str) and _number(row.get("total")) \
            and _number(row.get("kept")) and isinstance(row.get("dropped", {}), dict)  # fmt: skip
        if not ok:
            raise ReportInputError(p, f"envs[{i}] needs 'env', 'total', 'kept' and a 'dropped' object")
    decontam = data.get("decontam")
    if decontam is not None and not (isinstance(decontam, dict) and _number(decontam.get("kept"))):
        raise ReportInputError(p, "'decontam' needs 'kept' and 'dropped'")
    return data


def load_mix(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` of :func:`agenttuning.stages.mix.run` (``MixOutput``)."""
    p = Path(path)
    data = _read_json(p)
    need = ("n_agent", "n_general", "n", "eta")
    if not isinstance(data, dict) or not all(_number(data.get(k)) for k in need):
        raise ReportInputError(p, f"not a mix metrics file: needs numbers {list(need)}")
    return data


@dataclass(frozen=True)
class TrainCurves:
    """A training run's ``metrics.jsonl`` split into train records (with ``loss``) and eval records (``eval_*``)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]

    def series(self, key: str, *, source: Literal["train", "eval"] = "train") -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one key, skipping records without a finite number for it."""
        steps, values = [], []
        for r in self.train if source == "train" else self.eval:
            v = r.get(key)
            if _number(v) and math.isfinite(v):
                steps.append(int(r["step"]))
                values.append(float(v))
        return steps, values


def load_train_metrics(path: str | os.PathLike[str]) -> TrainCurves:
    """Read ``metrics.jsonl`` (:mod:`agenttuning.train.metrics`); every record needs an integer ``step``."""
    p = Path(path)
    if not p.is_file():
        raise ReportInputError(p, "not found")
    train, evals = [], []
    for lineno, obj in iter_json(p):
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), int) or isinstance(obj.get("step"), bool):
            raise RecordError(p, lineno, "a metrics record must be a JSON object with an integer 'step'")
        if any(k.startswith("eval_") for k in obj):
            evals.append(obj)
        elif "loss" in obj:
            train.append(obj)
    if not train and not evals:
        raise ReportInputError(p, "no training or eval records")
    return TrainCurves(train, evals)


def trajectories_path(result: AgentEvalResult, results_dir: Path, env_id: str) -> Path:
    """Where an environment's trajectories of an agent result lie (``EnvResult.trajectories`` is relative)."""
    env = next(e for e in result.envs if e.env_id == env_id)
    return results_dir / env.trajectories


def load_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Every trajectory of a JSONL file; a bad line raises ``RecordError`` (``file:line: what``)."""
    p = Path(path)
    if not p.is_file():
        raise ReportInputError(p, "not found")
    return read_records(p, Trajectory)


# ------------------------------------------------------------------------------------------------------------
# A spec file


class _SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    eta: float
    filtered: bool = True
    agent: str
    general: str | None = None


class ReportSpec(BaseModel):
    """A report spec file's fields (the module docstring); paths are relative to the file."""

    model_config = ConfigDict(extra="forbid")
    title: str = "AgentTuning report"
    agent: dict[str, str]
    general: dict[str, str] = {}
    data_stats: str | None = None
    construction: str | None = None
    mix: str | None = None
    train_metrics: str | None = None
    teacher_trajectories: list[str] = []
    sweep: list[_SweepSpec] = []
    normalisers: str | None = None
    provenance: dict[str, str] = {}
    notes: list[str] = []
    metric: Metric = "mean_reward"
    viewer_per_env: int = 10
    viewer_max_chars: int = 4000


def load_report_inputs(path: str | os.PathLike[str]) -> ReportInputs:
    """:class:`ReportInputs` from a YAML or JSON spec (module docstring), read by the one config loader
    (:func:`agenttuning.config.load`: unknown keys and bad values named); relative paths are relative to it."""
    from agenttuning.config import ConfigError, load

    p = Path(path)
    try:
        spec = load(ReportSpec, p)
    except ConfigError as e:
        raise ReportInputError(p, str(e).removeprefix(f"{p}: ")) from None

    def at(v: str) -> Path:
        q = Path(v)
        return q if q.is_absolute() else p.parent / q

    def optional(v: str | None) -> Path | None:
        return at(v) if v is not None else None

    try:
        return ReportInputs(
            title=spec.title,
            agent={k: at(v) for k, v in spec.agent.items()},
            general={k: at(v) for k, v in spec.general.items()},
            data_stats=optional(spec.data_stats),
            construction=optional(spec.construction),
            mix=optional(spec.mix),
            train_metrics=optional(spec.train_metrics),
            teacher_trajectories=[at(t) for t in spec.teacher_trajectories],
            sweep=[SweepPoint(s.label, s.eta, s.filtered, at(s.agent), optional(s.general)) for s in spec.sweep],
            normalisers=optional(spec.normalisers),
            provenance=spec.provenance,
            notes=spec.notes,
            metric=spec.metric,
            viewer_per_env=spec.viewer_per_env,
            viewer_max_chars=spec.viewer_max_chars,
        )
    except ValueError as e:
        raise ReportInputError(p, str(e)) from None
