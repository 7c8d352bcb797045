"""The pipeline's config: one section per stage, each the stage's own pydantic config, read by the one loader.

A config names *what* to build; where each stage's output lives is decided by its content key
(:mod:`agenttuning.pipeline.cache`), so two configs that agree on a stage's inputs and settings share its output.
The resolved config is saved beside the run (``run.json``), as ARCHITECTURE habit 7 asks.

Everything a mistake can be found in is checked when the config loads, not minutes later in the stage that uses
it, each error naming the file and the key (:class:`PipelineConfigError`): value types and ranges (pydantic), the
train fields (a valid TrainConfig), the model and tokenizer (a local path must exist and be a model folder or a
``.gguf`` file; an alias must be installed; a scratch preset must exist), the teacher policy spec and the policy
options, the environments, the general data source, and the eta values of the sweep.

>>> from agenttuning.config import override
>>> cfg = PipelineConfig.model_validate({"teacher": {"envs": ["db"]}})
>>> override(cfg, ["mix.eta=0.5", "teacher.n=10"]).mix.eta
0.5
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agenttuning.config import ConfigError, load
from agenttuning.policies.specs import PolicySpecField
from agenttuning.stages.decontaminate import DecontaminateConfig
from agenttuning.stages.filter import FilterConfig
from agenttuning.stages.instruct import InstructConfig
from agenttuning.stages.mix import MixConfig
from agenttuning.stages.prepare import PrepareConfig
from agenttuning.train.config import TrainConfig

__all__ = [
    "DEFAULT_CONFIG",
    "EMBEDDED_CONFIGS",
    "PipelineConfig",
    "PipelineConfigError",
    "load_pipeline_config",
]

DEFAULT_CONFIG = "default"  # the embedded config: src/agenttuning/pipeline/default.yaml
#: configs shipped inside the package, by name: ``agenttuning pipeline scratch``
EMBEDDED_CONFIGS = {"default": "default.yaml", "scratch": "scratch.yaml"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherConfig(_Section):
    """Stage 1: the teacher acting in the training environments (AgentTuning §2.1, trajectory generation)."""

    policy: PolicySpecField = Field("expert", description="Policy spec: 'expert', 'noisy:P', 'openai:MODEL', "
                                    "'hf:PATH' (a typed spec; written as its string).")  # fmt: skip
    policy_options: dict[str, Any] = Field(default_factory=dict, description="Options for make_policy "
                                           "(base_url, max_new_tokens, temperature...).")  # fmt: skip
    envs: list[str] = Field(default_factory=lambda: ["db"], description="Environment families to collect in "
                            "(they become the held-in group).")  # fmt: skip
    split: Literal["train", "test"] = "train"
    n: int | None = Field(None, ge=1, description="Tasks per environment (None: all).")
    concurrency: int = Field(8, ge=1)
    max_turns: int | None = Field(None, ge=1, description="None: each environment's own budget.")


class TasksConfig(_Section):
    """Where the teacher's tasks come from: each environment's derived tasks (``teacher.envs``, ``teacher.split``,
    ``teacher.n``), plus tasks a teacher model writes and the ``instruct`` stage verifies (AgentTuning §2.1)."""

    self_instruct: list[InstructConfig] = Field(default_factory=list, description="Self-instruct runs, each the "
                                                "``agenttuning instruct`` config (env, teacher, base_url, n, ...); "
                                                "their verified tasks join that environment's train tasks. The API "
                                                "key comes from $OPENAI_API_KEY.")  # fmt: skip


class GeneralConfig(_Section):
    """General chat data for the hybrid mixture (the paper's ShareGPT)."""

    source: str = Field("stdlib", description="'stdlib' (Python's own docstrings as Q/A, offline), a file or "
                        "folder in any layout the reader knows (ShareGPT, OpenAI messages, ...), or a Hugging Face "
                        "dataset id (online, or cached with HF_HUB_OFFLINE=1).")  # fmt: skip
    n: int | None = Field(None, ge=1, description="General examples to use for training (None: all).")
    held_out: int = Field(64, ge=0, description="Examples kept out of training for the general evaluation "
                          "(stdlib: the tail of its seeded order; a file: its last records).")  # fmt: skip
    seed: int = 0


class ModelConfig(_Section):
    """The model to tune: any HF causal LM, or one built from scratch with a tokenizer trained on the run's data."""

    name: str = Field("scratch:small", description="HF hub id or local folder, a .gguf file, an alias such as "
                      "'smollm2-135m-instruct' (docs/models.md), or 'scratch:PRESET' (tiny, small, base: see "
                      "agenttuning.train.scratch).")  # fmt: skip
    tokenizer: str | None = Field(None, description="HF models: tokenizer id/path (default: the model's).")
    vocab_size: int = Field(4096, ge=300, description="scratch: BPE vocabulary trained on the run's data.")
    max_position_embeddings: int = Field(2048, ge=64, description="scratch: the model's context length.")
    seed: int = 0
    overrides: dict[str, Any] = Field(default_factory=dict, description="scratch: LlamaConfig fields.")


class EvalConfig(_Section):
    """Stage 3: the agent evaluation (held-in and held-out) and the offline general check."""

    envs: list[str] = Field(default_factory=lambda: ["all"], description="Names/ids or held-in, held-out, all.")
    n: int | None = Field(None, ge=1, description="Test tasks per environment (None: the whole split).")
    max_turns: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    concurrency: int = Field(16, ge=1)
    policy_options: dict[str, Any] = Field(default_factory=dict)
    general_n: int = Field(64, ge=0, description="Held-out general examples for loss / exact match (0: skip).")
    general_batch_size: int = Field(8, ge=1)


class SweepConfig(_Section):
    """What ``agenttuning sweep`` varies: eta values, and the unfiltered variant (the paper's ablations)."""

    eta: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=lambda: [0.2, 1.0], min_length=1)
    unfiltered: bool = Field(True, description="Also train on unfiltered trajectories at the main eta.")


class ReportConfig(_Section):
    viewer_per_env: int = Field(40, ge=1, description="Trajectories per (model, environment) in the viewer.")


#: train fields the pipeline sets, and where they come from instead
SET_BY_PIPELINE = {"model": "model.name", "tokenizer": "model.tokenizer", "agent_data": "the prepare stage",
                   "general_data": "the prepare stage", "eta": "mix.eta", "max_len": "prepare.max_len",
                   "length_policy": "prepare.length_policy", "output_dir": "out", "resume": "the stage cache"}


class PipelineConfig(_Section):
    """Everything ``agenttuning pipeline`` needs. ``out`` holds ``stages/`` (content-addressed) and the run's links."""

    name: str = "agenttuning"
    out: str = "runs/pipeline"
    teacher: TeacherConfig = TeacherConfig()
    tasks: TasksConfig = TasksConfig()
    filter: FilterConfig = Field(default_factory=lambda: FilterConfig(min_reward=1.0),
                                 description="The filter stage (agenttuning.stages.filter).")
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    general: GeneralConfig = GeneralConfig()
    model: ModelConfig = ModelConfig()
    prepare: PrepareConfig = Field(default_factory=lambda: PrepareConfig(pack=False), description="The prepare "
                                   "stage, run once per source; pack must stay false (the trainer packs).")  # fmt: skip
    mix: MixConfig = MixConfig()
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1.0), description="The trainer's "
                               "settings (agenttuning.train.config) but those in SET_BY_PIPELINE. Given, it replaces "
                               "this default whole.")  # fmt: skip
    eval: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _train_fields_the_pipeline_sets(cls, data: Any) -> Any:
        """Before the train section is validated: a field the pipeline sets is an error naming where it comes from."""
        train = data.get("train") if isinstance(data, dict) else None
        for key in SET_BY_PIPELINE:
            if isinstance(train, dict) and key in train:
                raise ValueError(f"train.{key} is set by the pipeline (use {SET_BY_PIPELINE[key]})")
        return data


class PipelineConfigError(ConfigError):
    """A config that cannot be used; the message names the file and the key."""


def _check_train(cfg: PipelineConfig, where: str) -> None:
    if cfg.prepare.pack:
        raise PipelineConfigError(f"{where}: prepare.pack must be false in the pipeline: the trainer draws the "
                                  "eta-mixture and packs its own rows")  # fmt: skip


def check_pipeline_config(cfg: PipelineConfig, where: str) -> PipelineConfig:
    """What pydantic cannot check, at load time: the fields the pipeline sets, the model, the policies, the
    environments, the general data, the output folder (PipelineConfigError naming ``where`` and the key)."""
    _check_train(cfg, where)
    _check_model(cfg.model, where)
    _check_policies(cfg, where)
    _check_envs(cfg, where)
    source = cfg.general.source
    if source != "stdlib" and not Path(source).expanduser().exists() and not _hub_dataset(source):
        raise PipelineConfigError(f"{where}: general.source: no such file or folder {source!r} "
                                  "(or 'stdlib', or a Hugging Face dataset id)")  # fmt: skip
    if not cfg.out.strip() or Path(cfg.out).is_file():
        raise PipelineConfigError(f"{where}: out: {cfg.out!r} is not a folder path")
    return cfg


def _hub_dataset(source: str) -> bool:
    from agenttuning.data.reader import looks_like_hub_id

    return source.startswith("hf:") or (looks_like_hub_id(source) and not looks_local(source))


def looks_local(spec: str) -> bool:
    """Whether a model name is meant as a path on this machine rather than a hub id (``name`` or ``org/name``).

    >>> [looks_local(s) for s in ("org/model", "gpt2", "./m", "../m", "/m", "~/m", "runs/a/model")]
    [False, False, True, True, True, True, True]
    """
    return (spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or spec in (".", "..") or "\\" in spec
            or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec))  # fmt: skip


def check_model_path(spec: str, key: str, *, model: bool = True) -> None:
    """A model (or, ``model=False``, tokenizer) spec that names something local must be there and loadable.

    ``.gguf`` files and aliases are checked by :func:`agenttuning.models.check_model_source`; a folder must hold a
    Hugging Face ``config.json`` (models); a path-like name that does not exist is an error, not a hub id to
    download. PipelineConfigError names ``key``.
    """
    from agenttuning.models import ModelSourceError, check_model_source, source_kind

    kind = source_kind(spec)
    try:
        check_model_source(spec)
    except ModelSourceError as e:
        raise PipelineConfigError(f"{key}: {e}") from None
    p = Path(spec).expanduser()
    if kind == "folder" and model and not (p / "config.json").is_file():
        raise PipelineConfigError(f"{key}: the folder {spec!r} has no config.json, so it is not a Hugging Face "
                                  "model folder")  # fmt: skip
    if kind == "hub" and p.is_file():
        raise PipelineConfigError(f"{key}: {spec!r} is a file; give a model folder, a .gguf file or a hub id")
    if kind == "hub" and looks_local(spec):
        raise PipelineConfigError(f"{key}: no such folder {spec!r} (a hub id is 'name' or 'org/name')")


def _check_policies(cfg: PipelineConfig, where: str) -> None:
    """The teacher's spec parses and its options and the evaluation's (``hf:`` policies) are known parameters."""
    from agenttuning.policies.specs import HFSpec

    spec = cfg.teacher.policy  # parsed when the config was validated
    if isinstance(spec, HFSpec):
        try:
            check_model_path(spec.model, "teacher.policy")
        except PipelineConfigError as e:
            raise PipelineConfigError(f"{where}: {e}") from None
    _check_options(spec.kind, cfg.teacher.policy_options, "teacher.policy_options", where)
    _check_options("hf", cfg.eval.policy_options, "eval.policy_options", where)  # the models are evaluated as hf:


def _check_options(kind: str, options: dict[str, Any], key: str, where: str) -> None:
    """Option names must be parameters of the policy's constructor (a typo would fail only at the stage)."""
    from agenttuning.policies.specs import check_policy_options

    try:
        check_policy_options(kind, options)  # type: ignore[arg-type]
    except ValueError as e:
        raise PipelineConfigError(f"{where}: {key}: {e}") from None


def _check_envs(cfg: PipelineConfig, where: str) -> None:
    from agenttuning.envs import base
    from agenttuning.eval.agent import GROUP_WORDS

    for key, names in (("teacher.envs", cfg.teacher.envs), ("eval.envs", cfg.eval.envs)):
        if not names:
            raise PipelineConfigError(f"{where}: {key}: give at least one environment")
        for name in names:
            if key == "eval.envs" and name in GROUP_WORDS:
                continue
            try:
                base.get(name)
            except KeyError as e:
                raise PipelineConfigError(f"{where}: {key}: {e.args[0]}") from None
    _check_self_instruct(cfg, where)


def _check_self_instruct(cfg: PipelineConfig, where: str) -> None:
    """Each self-instruct run names a family that has a self-instruct module and that the teacher collects in (its
    tasks join that family's train tasks); its ``openai:MODEL`` teacher is checked by the config itself."""
    from agenttuning.envs import base
    from agenttuning.stages.instruct import FAMILIES

    collected = {base.get(name).name for name in cfg.teacher.envs}
    for i, run in enumerate(cfg.tasks.self_instruct):
        key = f"tasks.self_instruct[{i}]"
        try:
            family = base.get(run.env).name
        except KeyError as e:
            raise PipelineConfigError(f"{where}: {key}.env: {e.args[0]}") from None
        if family not in FAMILIES:
            raise PipelineConfigError(f"{where}: {key}.env: {run.env!r} has no self-instruct module (supported: "
                                      f"{', '.join(sorted(FAMILIES))})")  # fmt: skip
        if family not in collected:
            raise PipelineConfigError(f"{where}: {key}.env: {run.env!r} is not in teacher.envs, so its tasks would "
                                      "never be played; add it there")  # fmt: skip
        if cfg.teacher.split != "train":
            raise PipelineConfigError(f"{where}: {key}: self-instructed tasks are train tasks, but teacher.split is "
                                      f"{cfg.teacher.split!r}")  # fmt: skip


def _check_model(model: ModelConfig, where: str) -> None:
    """Fail at load time on a model that cannot be found (nothing is hashed or converted here)."""
    if model.name.startswith("scratch:"):
        from agenttuning.train.scratch import PRESETS

        preset = model.name.partition(":")[2]
        if preset not in PRESETS:
            raise PipelineConfigError(f"{where}: model.name: unknown scratch preset {preset!r}; use "
                                      + ", ".join(f"scratch:{p}" for p in PRESETS))  # fmt: skip
        if model.overrides:
            _check_overrides(model.overrides, where)
        return
    for key, spec, is_model in (("model.name", model.name, True), ("model.tokenizer", model.tokenizer, False)):
        if spec is None:
            continue
        try:
            check_model_path(spec, key, model=is_model)
        except PipelineConfigError as e:
            raise PipelineConfigError(f"{where}: {e}") from None


def _check_overrides(overrides: dict[str, Any], where: str) -> None:
    """model.overrides are LlamaConfig fields: LlamaConfig keeps unknown keywords silently, so a typo would be lost."""
    from transformers import LlamaConfig

    known = set(LlamaConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PipelineConfigError(f"{where}: model.overrides: unknown LlamaConfig field(s) "
                                  f"{', '.join(map(repr, unknown))}")  # fmt: skip


def default_config_text(name: str = DEFAULT_CONFIG) -> str:
    """An embedded config's YAML text (:data:`EMBEDDED_CONFIGS`; the default when no name is given)."""
    return resources.files("agenttuning.pipeline").joinpath(EMBEDDED_CONFIGS[name]).read_text(encoding="utf-8")


def load_pipeline_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()
                         ) -> PipelineConfig:  # fmt: skip
    """Read a pipeline YAML (None or ``"default"``: the embedded default; ``"scratch"``: the embedded smoke run)
    with the one loader (:func:`agenttuning.config.load`), apply ``section.key=value`` overrides, and check it
    (:func:`check_pipeline_config`). A file of that name in the working directory wins over an embedded config."""
    name = DEFAULT_CONFIG if path is None else str(path)
    try:
        if name in EMBEDDED_CONFIGS and not Path(name).is_file():
            where = f"{EMBEDDED_CONFIGS[name]} (embedded)"
            cfg = load(PipelineConfig, None, overrides, text=default_config_text(name), where=where)
        else:
            where = name
            if not Path(name).is_file():
                names = ", ".join(EMBEDDED_CONFIGS)
                raise PipelineConfigError(f"{name}: no such config file (embedded configs: {names})")
            cfg = load(PipelineConfig, name, overrides)
    except PipelineConfigError:
        raise
    except ConfigError as e:
        raise PipelineConfigError(str(e)) from None
    return check_pipeline_config(cfg, "overrides" if overrides else where)
