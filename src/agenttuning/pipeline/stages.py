"""The pipeline's stage table: for each stage, the stages it reads, what its key hashes, and the call that runs it.

Each entry calls the same function as the command of the same name, with the config's section for that stage:
``filter``, ``decontaminate``, ``prepare`` and ``mix`` call ``agenttuning.stages.<name>.run`` (so the command and
the stage write byte-identical files from the same inputs; tested), ``rollout`` the engine's ``rollout``, ``train``
the trainer's ``train``, the evaluations ``evaluate_agent`` and ``evaluate_general``. What is left here is only
where each input comes from. The runner (:mod:`agenttuning.pipeline.run`) computes keys, skips what is done, and
writes each manifest (:mod:`agenttuning.stages.manifest`) with the stage's result and key.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from agenttuning.data.outputs import EmptyOutputError
from agenttuning.pipeline.config import PipelineConfig
from agenttuning.stages.manifest import StageResult

__all__ = ["STAGES", "Stage", "StageContext", "StageRecord"]


@dataclass(frozen=True)
class StageRecord:
    """A finished stage as later stages see it: its folder and its manifest's ``result``."""

    name: str
    key: str
    dir: Path
    result: dict[str, Any]
    status: str = "cached"  # "ran" or "cached"
    seconds: float = 0.0


@dataclass
class StageContext:
    config: PipelineConfig
    dir: Path
    inputs: dict[str, StageRecord]
    console: Console = field(default_factory=Console)
    progress: bool = True

    def path(self, stage: str, output: str) -> Path:
        """An upstream stage's output file (a name in its manifest's result), as an absolute path."""
        rec = self.inputs[stage]
        return rec.dir / rec.result[output]


# ------------------------------------------------------------------------------------------------------------
# Agent data: (instruct) -> tasks -> rollout -> filter -> (construction) -> decontaminate


def _teacher_envs(cfg: PipelineConfig) -> list[Any]:
    from agenttuning.envs import base

    return [base.get(name) for name in cfg.teacher.envs]


def instruct_settings(cfg: PipelineConfig) -> dict[str, Any]:
    from agenttuning.envs import base

    runs = [run.model_dump(mode="json") for run in cfg.tasks.self_instruct]
    envs = [{"id": d.id, "prompt_hash": d.prompt_hash} for d in (base.get(r.env) for r in cfg.tasks.self_instruct)]
    test = [{"id": d.id, "prompt_hash": d.prompt_hash} for d in base.available()]  # novelty is checked against these
    return {"runs": runs, "envs": envs, "against": test}


def run_instruct(ctx: StageContext) -> dict[str, Any]:
    """Self-instruct (§2.1): each ``tasks.self_instruct`` run of :func:`agenttuning.stages.instruct.run`, in its own
    folder ``<i>-<env>/``; the teacher's API key comes from ``$OPENAI_API_KEY``."""
    from agenttuning.stages import instruct as stage

    runs = []
    for i, config in enumerate(ctx.config.tasks.self_instruct):
        folder = f"{i:02d}-{config.env}"
        result = stage.run(config, ctx.dir / folder)
        ctx.console.print(f"instruct · {result.env}: asked {result.asked}, drafted {result.drafts}, "
                          f"kept {result.kept}", highlight=False)  # fmt: skip
        runs.append({"dir": folder, **result.model_dump(mode="json")})
    return {"runs": runs}


def instructed_tasks(rec: StageRecord) -> list[Any]:
    """Every task the instruct stage kept, run by run."""
    from agenttuning.jsonl import read_records
    from agenttuning.schema import Task

    return [t for r in rec.result["runs"] for t in read_records(rec.dir / r["dir"] / r["tasks"], Task)]


def tasks_settings(cfg: PipelineConfig) -> dict[str, Any]:
    envs = [{"id": d.id, "prompt_hash": d.prompt_hash} for d in _teacher_envs(cfg)]
    return {"envs": envs, "split": cfg.teacher.split, "n": cfg.teacher.n}


def run_tasks(ctx: StageContext) -> dict[str, Any]:
    """Task derivation (the first ``teacher.n`` of each environment's split), then any self-instructed tasks of the
    same environment, written out so the run records what it asked."""
    from agenttuning.jsonl import write_atomic

    t = ctx.config.teacher
    extra = instructed_tasks(ctx.inputs["instruct"]) if "instruct" in ctx.inputs else []
    files: dict[str, Any] = {}
    for d in _teacher_envs(ctx.config):
        derived = d.tasks(t.split)[: t.n] if t.n else d.tasks(t.split)
        instructed = [task for task in extra if task.env == d.id]
        write_atomic(ctx.dir / f"{d.id}.jsonl", [task.model_dump(mode="json") for task in derived + instructed])
        files[d.id] = {"file": f"{d.id}.jsonl", "n": len(derived) + len(instructed), "derived": len(derived),
                       "self_instruct": len(instructed)}  # fmt: skip
    return {"envs": files}


def rollout_settings(cfg: PipelineConfig) -> dict[str, Any]:
    t = cfg.teacher
    return {"policy": t.policy, "policy_options": t.policy_options, "max_turns": t.max_turns}


def run_rollout(ctx: StageContext) -> dict[str, Any]:
    """The teacher acts in every environment (resumable: a killed run continues its JSONL files)."""
    from agenttuning.stages.filter import read_trajectories
    from agenttuning.envs import base
    from agenttuning.jsonl import read_records
    from agenttuning.policies import make_policy
    from agenttuning.rollout.engine import EpisodeLimits, rollout
    from agenttuning.rollout.progress import RolloutProgress, summary_table
    from agenttuning.schema import Task

    t = ctx.config.teacher
    tasks_rec = ctx.inputs["tasks"]
    out: dict[str, Any] = {}
    for env_id, info in tasks_rec.result["envs"].items():
        d = base.get(env_id)
        tasks = list(read_records(tasks_rec.dir / info["file"], Task))
        policy = make_policy(t.policy, env=d, **t.policy_options)
        path = ctx.dir / f"{env_id}.jsonl"
        with RolloutProgress(f"teacher {policy.name} · {env_id}", console=ctx.console, enabled=ctx.progress) as bar:
            summary = rollout(d, tasks, policy, path, concurrency=t.concurrency, resume=True,
                              limits=EpisodeLimits(max_turns=t.max_turns),
                              on_start=bar.on_start, on_result=bar.on_result)  # fmt: skip
        ctx.console.print(summary_table(summary, title=f"teacher · {env_id}"))
        done = read_trajectories(path)
        out[env_id] = {"file": path.name, "n": len(done), "successes": sum(t.success for t in done),
                       "mean_reward": round(sum(t.reward for t in done) / max(len(done), 1), 4)}
    return {"envs": out, "files": [v["file"] for v in out.values()]}


def filter_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.filter.model_dump(mode="json")


def run_filter(ctx: StageContext) -> StageResult:
    """Reward filtering (§2.1), :func:`agenttuning.stages.filter.run` over the teacher's trajectory files."""
    from agenttuning.stages import filter as stage

    rec = ctx.inputs["rollout"]
    return stage.run(ctx.config.filter, [rec.dir / name for name in rec.result["files"]], ctx.dir)


def decontaminate_settings(cfg: PipelineConfig) -> dict[str, Any]:
    from agenttuning.envs import base

    test = [{"id": d.id, "prompt_hash": d.prompt_hash} for d in base.available()]  # what it is checked against
    return {**cfg.decontaminate.model_dump(mode="json"), "against": test}


def run_decontaminate(ctx: StageContext) -> StageResult:
    """Drop duplicates and test overlap, write AgentInstruct: :func:`agenttuning.stages.decontaminate.run`."""
    from agenttuning.stages import decontaminate as stage

    return stage.run(ctx.config.decontaminate, [ctx.inputs["filter"].dir], ctx.dir)


def run_construction(ctx: StageContext) -> dict[str, Any]:
    """The construction table (Table 1 of the paper) of this run: :func:`agenttuning.data.construction.construction_table`
    over the tasks, the teacher's trajectories and the kept ones; ``construction.json``."""
    from agenttuning.data.construction import construction_table, instructed_counts
    from agenttuning.jsonl import read_records, write_text_atomic
    from agenttuning.schema import Task
    from agenttuning.stages.filter import read_trajectories

    tasks_rec, rollout_rec, filter_rec = ctx.inputs["tasks"], ctx.inputs["rollout"], ctx.inputs["filter"]
    tasks = [t for info in tasks_rec.result["envs"].values() for t in read_records(tasks_rec.dir / info["file"], Task)]
    instruct = ctx.inputs.get("instruct")
    runs = instruct.result["runs"] if instruct is not None else []
    table = construction_table(
        tasks, read_trajectories([rollout_rec.dir / f for f in rollout_rec.result["files"]]),
        read_trajectories(filter_rec.dir / filter_rec.result["kept"]), instructed_counts(runs),
        {t.id for t in instructed_tasks(instruct)} if instruct is not None else set(),
    )  # fmt: skip
    write_text_atomic(ctx.dir / "construction.json", table.model_dump_json(indent=2) + "\n")
    return {"construction": "construction.json", "rows": len(table.rows)}


# ------------------------------------------------------------------------------------------------------------
# General data


def general_settings(cfg: PipelineConfig) -> dict[str, Any]:
    from agenttuning.pipeline.cache import file_digest

    g = cfg.general
    src: dict[str, Any] = {"source": g.source}
    if g.source == "stdlib":  # the text is this Python's standard library: its version is the data's version
        src["python"] = platform.python_version()
        src["stdlib"] = sys.base_prefix
    else:
        local = Path(g.source.removeprefix("hf:")).expanduser()
        # a local file or folder is addressed by its content; a Hub id by its name (pin a revision to be exact)
        src["digest"] = file_digest(local) if local.exists() else None
    return {**src, "n": g.n, "held_out": g.held_out, "seed": g.seed}


def run_general(ctx: StageContext) -> dict[str, Any]:
    """General chat examples: a held-out slice for the general evaluation, the rest (decontaminated) for training."""
    from agenttuning.data.decontam import decontaminate
    from agenttuning.data.formats import write_examples
    from agenttuning.data.general import stdlib_dir, stdlib_examples
    from agenttuning.data.reader import read_data

    g = ctx.config.general
    if g.source == "stdlib":
        items = stdlib_examples(seed=g.seed)
        where = f"Python {platform.python_version()} standard-library docstrings ({stdlib_dir()})"
    else:
        items = read_data(g.source, source_kind="general").examples
        where = str(Path(g.source).resolve())
    held = items[len(items) - g.held_out:] if g.held_out else []
    train = items[: len(items) - g.held_out]
    clean = decontaminate(train)
    train = clean.kept[: g.n] if g.n else clean.kept
    write_examples(train, ctx.dir / "train.jsonl")
    write_examples(held, ctx.dir / "heldout.jsonl")
    return {"train": "train.jsonl", "heldout": "heldout.jsonl", "n_train": len(train), "n_heldout": len(held),
            "dropped": dict(clean.dropped), "source": where}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Model: a tokenizer trained on the run's data and a model from scratch, or any HF model


def is_scratch(cfg: PipelineConfig) -> bool:
    return cfg.model.name.startswith("scratch:")


def tokenizer_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return {"vocab_size": cfg.model.vocab_size}


def run_tokenizer(ctx: StageContext) -> dict[str, Any]:
    """Byte-level BPE trained on the teacher's trajectories and the general training text (scratch models)."""
    from agenttuning.data.example import from_trajectory
    from agenttuning.data.reader import read_data
    from agenttuning.stages.filter import read_trajectories
    from agenttuning.tokens.bpe import texts_of, train_bpe_tokenizer

    rec = ctx.inputs["rollout"]
    agent = [from_trajectory(t) for t in read_trajectories([rec.dir / f for f in rec.result["files"]])]
    general = read_data(ctx.path("general", "train"), layout="examples").examples
    path = train_bpe_tokenizer(texts_of(agent + general), ctx.dir / "tokenizer", vocab_size=ctx.config.model.vocab_size)
    return {"tokenizer": str(Path(path).relative_to(ctx.dir)), "texts": len(agent) + len(general)}


def model_settings(cfg: PipelineConfig) -> dict[str, Any]:
    from agenttuning.models import source_fingerprint
    from agenttuning.pipeline.cache import file_digest

    m = cfg.model
    if is_scratch(cfg):
        return {"name": m.name, "seed": m.seed, "max_position_embeddings": m.max_position_embeddings,
                "overrides": m.overrides}  # fmt: skip
    gguf = source_fingerprint(m.name)
    if gguf is not None:  # a .gguf file or alias: its bytes (sha256) and the converter, not its path or alias
        tok = m.tokenizer and (source_fingerprint(m.tokenizer) or m.tokenizer)
        return {"gguf": gguf, "tokenizer": tok}
    local = Path(m.name)
    # a local folder is addressed by its content; a hub id by its name (pin a revision in the id to be exact)
    return {"name": m.name, "tokenizer": m.tokenizer, "digest": file_digest(local) if local.exists() else None}


def run_model(ctx: StageContext) -> dict[str, Any]:
    """The base model: built from scratch (random init, seeded) with the run's tokenizer, or an HF model named."""
    from agenttuning.models import describe_source, resolve_model, source_kind

    m = ctx.config.model
    if not is_scratch(ctx.config) and source_kind(m.name) in ("gguf", "alias"):
        # converted once into the model cache ($AGENTTUNING_CACHE/models); the folder is what later stages load
        folder = resolve_model(m.name, progress=ctx.progress)
        tok = resolve_model(m.tokenizer, progress=ctx.progress) if m.tokenizer else folder
        return {"model": folder, "tokenizer": tok, "local": False, "source": describe_source(m.name),
                "specs": {"model": m.name, "tokenizer": m.tokenizer or m.name}}  # fmt: skip
    if not is_scratch(ctx.config):
        return {"model": m.name, "tokenizer": m.tokenizer or m.name, "local": False}
    from agenttuning.train.scratch import build_scratch_model

    tok = ctx.path("tokenizer", "tokenizer")
    path = build_scratch_model(tok, ctx.dir / "model", preset=m.name.partition(":")[2], seed=m.seed,
                               max_position_embeddings=m.max_position_embeddings, **m.overrides)  # fmt: skip
    return {"model": str(Path(path).relative_to(ctx.dir)), "tokenizer": str(Path(path).relative_to(ctx.dir)),
            "local": True}  # fmt: skip


def model_path(rec: StageRecord) -> str:
    """The base model as a loadable id or absolute path."""
    return str(rec.dir / rec.result["model"]) if rec.result.get("local") else _converted(rec, "model")


def tokenizer_path(rec: StageRecord) -> str:
    return str(rec.dir / rec.result["tokenizer"]) if rec.result.get("local") else _converted(rec, "tokenizer")


def _converted(rec: StageRecord, what: str) -> str:
    """A recorded model-cache folder, converted again from its GGUF if the cache was cleared since."""
    path, spec = rec.result[what], rec.result.get("specs", {}).get(what)
    if spec is None or Path(path).is_dir():
        return path
    from agenttuning.models import resolve_model

    return resolve_model(spec)


# ------------------------------------------------------------------------------------------------------------
# Hybrid instruction tuning: prepare -> mix -> train


def prepare_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.prepare.model_dump(mode="json")


def run_prepare(ctx: StageContext) -> dict[str, Any]:
    """Render both sources with the model's chat template into ids and loss labels (the expensive, eta-free part):
    :func:`agenttuning.stages.prepare.run` once per source, into ``agent/`` and ``general/``."""
    from agenttuning.stages import prepare as stage
    from agenttuning.tokens.prepare import load_tokenizer_by_name

    tok = load_tokenizer_by_name(tokenizer_path(ctx.inputs["model"]))
    out: dict[str, Any] = {}
    for name, src in (("agent", ctx.inputs["decontaminate"].dir), ("general", ctx.path("general", "train"))):
        try:
            result = stage.run(ctx.config.prepare, [src], tok, ctx.dir / name)
        except EmptyOutputError as e:  # say which source, and which config keys decide
            raise EmptyOutputError(f"prepare ({name} data): {e} (config: prepare.max_len, prepare.length_policy, "
                                   "prepare.chat_template)") from None  # fmt: skip
        out[name] = name
        out[f"{name}_stats"] = result.model_dump(mode="json")
    return out


def mix_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.mix.model_dump(mode="json")


def run_mix(ctx: StageContext) -> StageResult:
    """What one epoch of the eta-mixture holds (the trainer draws it as it trains): :func:`agenttuning.stages.mix.run`."""
    from agenttuning.stages import mix as stage

    prep = ctx.inputs["prepare"]
    return stage.run(ctx.config.mix, prep.dir / prep.result["agent"], prep.dir / prep.result["general"], ctx.dir)


def train_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.train.model_dump(mode="json")


def train_config(ctx: StageContext) -> Any:
    """The :class:`~agenttuning.train.config.TrainConfig` to run: the config's ``train`` section with the fields the
    pipeline sets (``SET_BY_PIPELINE``) filled in: the model, the prepared data, eta, max_len, the stage folder."""
    from agenttuning.train.config import TrainConfig

    cfg = ctx.config
    prep, model, eta = ctx.inputs["prepare"], ctx.inputs["model"], cfg.mix.eta
    fields = {**cfg.train.model_dump(), "model": model_path(model), "tokenizer": tokenizer_path(model), "eta": eta,
              "max_len": cfg.prepare.max_len, "length_policy": cfg.prepare.length_policy,
              "output_dir": str(ctx.dir / "run"), "resume": "auto",
              "agent_data": str(prep.dir / prep.result["agent"]) if eta > 0 else None,
              "general_data": str(prep.dir / prep.result["general"]) if eta < 1 else None}  # fmt: skip
    if "seed" not in cfg.train.model_fields_set:
        fields["seed"] = cfg.mix.seed
    return TrainConfig.model_validate(fields).require_inputs("pipeline train stage")


def run_train(ctx: StageContext) -> dict[str, Any]:
    """Hybrid instruction tuning (AgentTuning §2.2), resumable from the newest checkpoint in the stage folder."""
    from agenttuning.train.config import save_config
    from agenttuning.train.trainer import train

    config = train_config(ctx)
    save_config(config, ctx.dir / "train.yaml")
    result = train(config)
    if result.model_dir is None:
        raise RuntimeError("training saved no model")
    final = result.losses[-1] if result.losses else None
    return {"model": str(Path(result.model_dir).relative_to(ctx.dir)), "metrics": "run/metrics.jsonl",
            "steps": result.steps, "final_loss": final, "eval": result.eval, "tokens": result.tokens,
            "tokens_per_s": round(result.tokens_per_s, 1), "wall_s": round(result.wall_s, 1), "local": True}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Evaluation


def held_in_families(cfg: PipelineConfig) -> list[str]:
    """The families the teacher collected in: the run's training families (the held-in group)."""
    return sorted({d.name for d in _teacher_envs(cfg)})


def eval_settings(cfg: PipelineConfig) -> dict[str, Any]:
    from agenttuning.envs import base

    from agenttuning.eval.agent import GROUP_WORDS

    e = cfg.eval
    # a group word (all, held-in, held-out) evaluates every registered environment, so each one's prompt counts;
    # named environments count alone (registering a new family does not redo an evaluation that names others)
    named = not any(w in GROUP_WORDS for w in e.envs)
    evaluated = [base.get(name) for name in e.envs] if named else base.available()
    registered = [{"id": d.id, "prompt_hash": d.prompt_hash} for d in evaluated]
    return {"envs": e.envs, "registered": registered, "held_in": held_in_families(cfg), "n": e.n, "max_turns": e.max_turns,
            "max_new_tokens": e.max_new_tokens, "policy_options": e.policy_options,
            "general_n": e.general_n}  # fmt: skip


def _eval_agent(ctx: StageContext, model: str) -> dict[str, Any]:
    from agenttuning.eval.agent import evaluate_agent
    from agenttuning.rollout.engine import EpisodeLimits
    from agenttuning.rollout.progress import RolloutProgress

    e = ctx.config.eval
    families = held_in_families(ctx.config)
    options = {"max_new_tokens": e.max_new_tokens, "temperature": 0.0, **e.policy_options}
    bar = RolloutProgress(ctx.dir.name, console=ctx.console, enabled=ctx.progress)

    def on_start(definition: Any, total: int, skipped: int) -> None:
        bar.label = f"{ctx.dir.name.rsplit('-', 1)[0]} · {definition.id}"
        bar.on_start(total, skipped)

    with bar:
        result = evaluate_agent(f"hf:{model}", e.envs, held_in=families, out_dir=ctx.dir / "agent", n=e.n,
                                concurrency=e.concurrency, limits=EpisodeLimits(max_turns=e.max_turns),
                                policy_options=options, on_start=on_start, on_result=bar.on_result)  # fmt: skip
    ctx.console.print(result.table(title=f"agent evaluation · {ctx.dir.name}"))
    return {"results": "agent/results.json",
            "envs": {r.env_id: {"success_rate": r.success_rate, "mean_reward": r.mean_reward, "group": r.group}
                     for r in result.envs}}  # fmt: skip


def _eval_general(ctx: StageContext, model: str) -> dict[str, Any]:
    from agenttuning.eval.general import evaluate_general, save_general_result

    e = ctx.config.eval
    if e.general_n == 0:
        return {}
    result = evaluate_general(model, examples=_heldout(ctx)[: e.general_n], batch_size=e.general_batch_size)
    save_general_result(result, ctx.dir / "general.json")
    return {"general": "general.json", "loss": result.loss, "perplexity": result.perplexity,
            "exact_match": result.exact_match}  # fmt: skip


def _heldout(ctx: StageContext) -> list[Any]:
    from agenttuning.data.reader import read_data

    return read_data(ctx.path("general", "heldout"), layout="examples").examples


def run_eval_base(ctx: StageContext) -> dict[str, Any]:
    """The base model before tuning: agent evaluation, then the general check."""
    model = model_path(ctx.inputs["model"])
    return {**_eval_agent(ctx, model), **_eval_general(ctx, model)}


def run_eval_tuned(ctx: StageContext) -> dict[str, Any]:
    """The tuned model: agent evaluation, then the general check."""
    rec = ctx.inputs["train"]
    model = str(rec.dir / rec.result["model"])
    return {**_eval_agent(ctx, model), **_eval_general(ctx, model)}


# ------------------------------------------------------------------------------------------------------------
# The stage table


@dataclass(frozen=True)
class Stage:
    """A stage: the upstream stages it reads, what its key hashes, how it runs, whether partial output resumes."""

    name: str
    inputs: tuple[str, ...]
    settings: Callable[[PipelineConfig], dict[str, Any]]
    run: Callable[[StageContext], StageResult | dict[str, Any]]
    resumable: bool = False
    version: int = 1
    when: Callable[[PipelineConfig], bool] = lambda cfg: True


STAGES: tuple[Stage, ...] = (
    Stage("instruct", (), instruct_settings, run_instruct, when=lambda cfg: bool(cfg.tasks.self_instruct)),
    Stage("tasks", ("instruct",), tasks_settings, run_tasks),
    Stage("rollout", ("tasks",), rollout_settings, run_rollout, resumable=True),
    Stage("filter", ("rollout",), filter_settings, run_filter),
    Stage("construction", ("instruct", "tasks", "rollout", "filter"), lambda cfg: {}, run_construction),
    Stage("decontaminate", ("filter",), decontaminate_settings, run_decontaminate),
    Stage("general", (), general_settings, run_general),
    Stage("tokenizer", ("rollout", "general"), tokenizer_settings, run_tokenizer, when=is_scratch),
    Stage("model", ("tokenizer",), model_settings, run_model),
    Stage("prepare", ("decontaminate", "general", "model"), prepare_settings, run_prepare),
    Stage("mix", ("prepare", "model"), mix_settings, run_mix),
    Stage("train", ("mix", "prepare", "model"), train_settings, run_train, resumable=True),
    Stage("eval-base", ("model", "general"), eval_settings, run_eval_base, resumable=True),
    Stage("eval-tuned", ("train", "general"), eval_settings, run_eval_tuned, resumable=True),
)
