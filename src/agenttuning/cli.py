"""The ``agenttuning`` command line: a thin shell over the Python API (each command parses, then calls one function)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from agenttuning.jsonl import RecordError

if TYPE_CHECKING:
    from agenttuning.policies.specs import PolicySpec

app = typer.Typer(
    help="AgentTuning end to end: collect ReAct trajectories in real environments, tune, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Bad input ends the command with one clear line and exit code 2, not a traceback; a stage that would write
    nothing (:class:`~agenttuning.data.outputs.EmptyOutputError`) ends it with the reason and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from agenttuning.data.outputs import EmptyOutputError

        try:
            return fn(*args, **kwargs)
        except EmptyOutputError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(1) from None
        except (RecordError, ValueError, KeyError, FileExistsError, FileNotFoundError, NotADirectoryError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err.print(f"[bold red]error:[/] {msg}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_friendly
def envs() -> None:
    """List the registered environments."""
    from agenttuning.envs.base import available

    t = Table(title="environments", header_style="bold")
    for col in ("name", "id", "train", "test", "max turns", "held-out", "prompt hash", "description"):
        t.add_column(col, justify="right" if col in ("train", "test", "max turns") else "left")
    for d in available():
        t.add_row(
            d.name, d.id, str(len(d.tasks("train"))), str(len(d.tasks("test"))), str(d.max_turns),
            "yes" if d.held_out else "", d.prompt_hash, d.description,
        )
    console.print(t)


tasks_app = typer.Typer(help="Show an environment's tasks, or import a task set (agenttuning tasks import ...).",
                        invoke_without_command=True)
app.add_typer(tasks_app, name="tasks")


@tasks_app.callback()
@_friendly
def tasks(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option(help="Environment name or versioned id.")] = None,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    n: Annotated[int | None, typer.Option("-n", help="Show the first N tasks.")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print tasks as JSONL (for --tasks FILE).")] = False,
) -> None:
    """Show an environment's tasks (--env), or import a task set: agenttuning tasks import KIND SOURCE --out FILE."""
    if ctx.invoked_subcommand is not None:
        return
    if env is None:
        raise ValueError("say which environment's tasks to show (--env NAME), or import: agenttuning tasks import "
                         "KIND SOURCE --out FILE")
    from agenttuning.envs.base import get

    items = get(env).tasks(_split(split))[:n]
    if jsonl:
        for t in items:
            sys.stdout.write(t.model_dump_json() + "\n")
        return
    table = Table(title=f"{get(env).id} {split}: {len(items)} tasks", header_style="bold")
    table.add_column("id")
    table.add_column("instruction")
    for t in items:
        table.add_row(t.id, t.instruction)
    console.print(table)


@tasks_app.command("import")
@_friendly
def tasks_import(
    kind: Annotated[str, typer.Argument(help="What SOURCE is: agentbench-db (an AgentBench DB task file), agentbench-os (an AgentBench OS task file, or a directory of them) or alfworld (ALFWorld's data folder).")],
    source: Annotated[Path, typer.Argument(help="The task file (JSON lines, or a .json list).")],
    out: Annotated[Path, typer.Option(help="Task JSONL to write (replaced), for --tasks FILE or the environment.")],
    split: Annotated[str, typer.Option(help="The split every task goes to: train or test.")] = "test",
    test_percent: Annotated[int | None, typer.Option(help="Instead: about this share in test, the rest in train.")] = None,
    require_gold: Annotated[bool, typer.Option(help="Leave out questions whose gold query misses their label.")] = False,
) -> None:
    """Import another benchmark's task file as our tasks; report every task left out, and why."""
    from agenttuning.data.outputs import EmptyOutputError
    from agenttuning.jsonl import write_atomic

    if kind == "agentbench-db":
        from agenttuning.envs.agentbench.db import ENV_ID, import_agentbench_db

        report: Any = import_agentbench_db(source, split=_split(split), test_percent=test_percent,
                                           require_gold=require_gold)
    elif kind == "agentbench-os":  # a task file, or a directory of them; each task is run in the sandbox first
        from agenttuning.envs.agentbench.os_tasks import ENV_ID, import_agentbench_os  # type: ignore[assignment]

        report = import_agentbench_os(source, split=_split(split), test_percent=test_percent)
    elif kind == "alfworld":  # ALFWorld's data folder: train from train/, test from valid_unseen/ (--split unused)
        from agenttuning.envs.alfworld import import_alfworld
        from agenttuning.envs.alfworld.definition import ENV_ID  # type: ignore[assignment]

        report = import_alfworld(source)
    else:
        raise ValueError(f"unknown task set kind {kind!r} (known: agentbench-db, agentbench-os, alfworld)")
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if not report.tasks:
        raise EmptyOutputError(f"{source}: no task could be imported")
    write_atomic(out, report.tasks)
    console.print(f"[dim]{len(report.tasks)} tasks → {out}; run them: agenttuning rollout --env {ENV_ID} "
                  f"--tasks {out}[/]")


@app.command()
@_friendly
def instruct(
    teacher: Annotated[str, typer.Option(help="The teacher: openai:MODEL (any OpenAI-compatible endpoint).")],
    out: Annotated[Path, typer.Option(help="Output folder: tasks.jsonl (for --tasks), rejections.jsonl, stats.json.")],
    env: Annotated[str, typer.Option(help="The environment to write tasks for (db, os, household).")] = "db",
    n: Annotated[int, typer.Option("-n", help="Tasks to ask the teacher for in all (kept: only those that verify).")] = 100,
    base_url: Annotated[str | None, typer.Option(help="The teacher's API root, e.g. http://127.0.0.1:8000/v1.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default $OPENAI_API_KEY); never written to disk.")] = None,
    per_request: Annotated[int, typer.Option(help="Tasks asked for in one request.")] = 10,
    seed: Annotated[int, typer.Option(help="Picks each request's seed tasks; the teacher's sampling seed.")] = 0,
    max_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 4096,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take (a small local model on a CPU: "
                                           "lower --max-tokens rather than raise this).")] = 120.0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that holds no earlier output.")] = False,
) -> None:
    """Self-instruct: a teacher writes new tasks; only those that parse, run, are solved by their own reference
    solution, fail a wrong answer, and are new (not near any existing or test task) are kept. See docs/instruct.md."""
    from agenttuning.stages.instruct import InstructConfig, run

    config = InstructConfig(env=env, teacher=teacher, base_url=base_url, n=n, per_request=per_request, seed=seed,
                            max_tokens=max_tokens, timeout=timeout)  # fmt: skip
    result = run(config, out, api_key=api_key, overwrite=overwrite)
    t = _metric_table(f"instruct → {out}")
    t.add_row("asked / drafted / kept", f"{n} / {result.drafts} / {result.kept}")
    for reason, count in sorted({**result.rejected, **result.rejected_replies}.items()):
        t.add_row(f"rejected · {reason}", str(count))
    console.print(t)


@app.command()
@_friendly
def rollout(
    env: Annotated[str, typer.Option(help="Environment name or versioned id.")],
    out: Annotated[Path, typer.Option(help="Output trajectory JSONL (appended to, one line per episode).")],
    policy: Annotated[str, typer.Option(help="openai:MODEL, hf:PATH_OR_ID, expert, wrong, noisy:P or random.")] = "expert",
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    n: Annotated[int | None, typer.Option("-n", help="Only the first N tasks of the split.")] = None,
    tasks_file: Annotated[Path | None, typer.Option("--tasks", help="Read tasks from a JSONL file instead.")] = None,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight at once.")] = 8,
    resume: Annotated[bool, typer.Option(help="Continue an existing output file, skipping finished task ids.")] = False,
    shard: Annotated[str | None, typer.Option(help="K/N: run only this machine's share of the tasks.")] = None,
    max_turns: Annotated[int | None, typer.Option(help="Turn budget (default: the environment's).")] = None,
    max_context_tokens: Annotated[int | None, typer.Option(help="Stop an episode past this many tokens.")] = None,
    timeout: Annotated[float, typer.Option(help="Per-episode wall-clock limit in seconds.")] = 600.0,
    base_url: Annotated[str | None, typer.Option(help="openai: endpoint (default $OPENAI_BASE_URL).")] = None,
    api_key: Annotated[str | None, typer.Option(help="openai: key (default $OPENAI_API_KEY).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (model policies).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens (model policies).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling / noisy policies.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar.")] = True,
) -> None:
    """Collect ReAct trajectories: run a policy on an environment's tasks, appending each finished episode."""
    from agenttuning.envs.base import get
    from agenttuning.jsonl import read_records
    from agenttuning.policies import make_policy, parse_policy_spec
    from agenttuning.rollout.engine import EpisodeLimits, parse_shard
    from agenttuning.rollout.engine import rollout as run
    from agenttuning.rollout.progress import RolloutProgress, summary_table
    from agenttuning.schema import Task

    spec = parse_policy_spec(policy)  # a bad spec is an error before anything is read or run
    definition = get(env)
    if tasks_file is not None:
        task_list = read_records(tasks_file, Task)
        foreign = [t.id for t in task_list if t.env.split("-v")[0] != definition.name]
        if foreign:
            raise ValueError(f"{tasks_file}: tasks {foreign[:3]} do not belong to {definition.id}")
    else:
        task_list = definition.tasks(_split(split))
    task_list = task_list[:n]
    options = _policy_options(spec, base_url, api_key, temperature, max_tokens, seed)
    pol = make_policy(spec, env=definition, **options)
    limits = EpisodeLimits(max_turns=max_turns, max_context_tokens=max_context_tokens, timeout_s=timeout)
    with RolloutProgress(f"{definition.id} · {pol.name}", enabled=progress) as bar:
        summary = run(
            definition, task_list, pol, out, concurrency=concurrency, limits=limits, resume=resume,
            shard=parse_shard(shard) if shard else None, on_start=bar.on_start, on_result=bar.on_result,
        )
    console.print(summary_table(summary, title=f"{definition.id} · {pol.name} → {out}"))


def _policy_options(
    spec: PolicySpec, base_url: str | None, api_key: str | None, temperature: float | None, max_tokens: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """The command's options that the spec's kind of policy takes, under its constructor's names."""
    from agenttuning.policies import HFSpec, NoisySpec, OpenAISpec

    if isinstance(spec, OpenAISpec):
        return {"base_url": base_url, "api_key": api_key, "temperature": temperature, "max_tokens": max_tokens,
                "seed": seed}
    if isinstance(spec, HFSpec):
        return {"temperature": temperature, "max_new_tokens": max_tokens, "seed": seed}
    if isinstance(spec, NoisySpec):
        return {"seed": seed}
    return {}


@app.command()
@_friendly
def show(
    path: Annotated[Path, typer.Argument(help="Trajectory JSONL file.")],
    task_id: Annotated[str | None, typer.Option("--id", help="Show only this task id.")] = None,
    n: Annotated[int, typer.Option("-n", help="How many trajectories to show.")] = 3,
    outcome: Annotated[str, typer.Option(help="all, success or failure.")] = "all",
    context: Annotated[bool, typer.Option(help="Also show the in-context prefix (instructions, example).")] = False,
    max_chars: Annotated[int, typer.Option(help="Clip long texts to this many characters.")] = 1500,
) -> None:
    """Show trajectories as a readable, coloured Thought / Action / Observation view."""
    from agenttuning.jsonl import read_records
    from agenttuning.rollout.view import render_trajectory
    from agenttuning.schema import Trajectory

    if outcome not in ("all", "success", "failure"):
        raise ValueError("--outcome must be all, success or failure")
    trajs = read_records(path, Trajectory)
    picked = [
        t for t in trajs
        if (task_id is None or t.task.id == task_id) and (outcome == "all" or t.success == (outcome == "success"))
    ]
    if task_id is not None and not picked:
        raise ValueError(f"no trajectory for task id {task_id!r} in {path}")
    for t in picked[:n]:
        console.print(render_trajectory(t, max_chars=max_chars, show_context=context))
    ok = sum(t.success for t in trajs)
    console.print(f"[dim]{path}: {len(trajs)} trajectories, {ok} successful; shown {min(n, len(picked))}[/]")


@app.command()
@_friendly
def check(
    env: Annotated[list[str] | None, typer.Option(help="Environment(s) to check (default: all registered).")] = None,
    max_tasks: Annotated[int | None, typer.Option(help="Limit the expert / wrong-answer sweeps.")] = None,
) -> None:
    """Run the conformance check on environments: contract, determinism, expert solves every test task."""
    from agenttuning.envs.base import available, get
    from agenttuning.rollout.conformance import check_env

    defs = [get(e) for e in env] if env else available()
    failed = False
    for d in defs:
        reason = d.unavailable_reason()
        if reason is not None:  # cannot run episodes here: not a pass (exit 1), said plainly
            err.print(f"[bold red]{d.id} cannot run on this machine:[/] {reason}", highlight=False)
            failed = True
            continue
        report = check_env(d, max_tasks=max_tasks)
        t = Table(title=f"conformance: {d.id}", header_style="bold")
        t.add_column("check")
        t.add_column("result")
        t.add_column("detail")
        for r in report.results:
            t.add_row(r.name, "[green]pass[/]" if r.passed else "[red]FAIL[/]", r.detail)
        console.print(t)
        failed |= not report.passed
    if failed:
        raise typer.Exit(1)


@app.command("filter")
@_friendly
def filter_(
    inputs: Annotated[list[Path], typer.Argument(help="Trajectory JSONL files or directories of them.")],
    out: Annotated[Path, typer.Option(help="Output folder: kept.jsonl (the kept trajectories), stats.json, manifest.json.")],
    min_reward: Annotated[
        list[str] | None, typer.Option(help="Keep threshold, FAMILY=VALUE or VALUE for all (default: 1, mind2web 2/3).")
    ] = None,
    require_success: Annotated[bool, typer.Option(help="Also require the environment's success flag.")] = False,
    max_tokens: Annotated[int | None, typer.Option(help="Drop trajectories longer than this (approximate tokens).")] = None,
    keep_all: Annotated[bool, typer.Option(help="Keep every finished trajectory (the paper's unfiltered ablation).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that holds no earlier filter output.")] = False,
) -> None:
    """Keep the trajectories worth training on (reward, finished, parsable, length), with statistics per environment.

    Next: ``agenttuning decontaminate OUT --out data/agentinstruct``. The --out folder is written fresh and swapped in
    when complete; keeping nothing is an error (exit 1)."""
    from agenttuning.data.filter import stats_table
    from agenttuning.stages import filter as stage

    fields: dict[str, Any] = {"enabled": not keep_all, "require_success": require_success, "max_tokens": max_tokens}
    if min_reward:
        fields["min_reward"] = _thresholds(min_reward)
    result = stage.run(stage.FilterConfig(**fields), inputs, out, overwrite=overwrite)
    stats = json.loads((out / result.stats).read_text(encoding="utf-8"))
    console.print(stats_table(stats["envs"]))
    console.print(f"kept {result.n_kept} of {result.total} trajectories in {out / result.kept}")


def _thresholds(items: list[str]) -> dict[str, float] | float:
    out: dict[str, float] = {}
    for item in items:
        family, sep, value = item.rpartition("=")
        try:
            out[family if sep else "*"] = float(value)
        except ValueError:
            raise ValueError(f"--min-reward {item!r}: expected FAMILY=VALUE or VALUE") from None
    return out["*"] if list(out) == ["*"] else out


@app.command()
@_friendly
def decontaminate(
    inputs: Annotated[list[Path], typer.Argument(help="A filter output, trajectories, or examples in any layout (AgentInstruct, ShareGPT, OpenAI).")],
    out: Annotated[Path, typer.Option(help="Output folder: <family>.jsonl (AgentInstruct layout; general chat as ShareGPT), stats.json, manifest.json.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    keep_all: Annotated[bool, typer.Option(help="Only convert: drop nothing (an ablation).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that holds no earlier decontaminate output.")] = False,
) -> None:
    """Drop duplicates and anything overlapping a test task (same id, same instruction, a shared 10-gram); write the
    published AgentInstruct layout, one file per family."""
    from agenttuning.stages import decontaminate as stage

    if fmt not in ("jsonl", "parquet"):
        raise ValueError("--format must be jsonl or parquet")
    result = stage.run(stage.DecontaminateConfig(enabled=not keep_all, format=fmt), inputs, out, overwrite=overwrite)  # type: ignore[arg-type]
    t = _metric_table(f"decontaminate → {out}")
    for family, n in result.records.items():
        t.add_row(f"kept · {family}", str(n))
    for reason, n in result.dropped.items():
        t.add_row(f"dropped · {reason}", str(n))
    console.print(t)


@app.command()
@_friendly
def mix(
    agent: Annotated[Path | None, typer.Option(help="Prepared agent data (a prepare --no-pack output folder).")] = None,
    general: Annotated[Path | None, typer.Option(help="Prepared general data (a prepare --no-pack output folder).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (metrics.json, manifest.json).")] = Path("mix"),
    eta: Annotated[float, typer.Option(help="Share of agent data (the paper: 0.2).")] = 0.2,
    n: Annotated[int | None, typer.Option("-n", help="Draws to describe (default: one epoch).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that holds no earlier mix output.")] = False,
) -> None:
    """What the eta-mixture the trainer draws holds: examples and tokens per source over one epoch.

    The trainer mixes as it trains (each example is agent data with probability eta), from the same prepared
    folders; nothing is copied. See docs/data.md."""
    from agenttuning.stages import mix as stage

    r = stage.run(stage.MixConfig(eta=eta, seed=seed, n=n), agent, general, out, overwrite=overwrite)
    t = _metric_table(f"mix → {out}")
    for k, v in r.model_dump(exclude={"metrics"}).items():
        t.add_row(k, str(v))
    console.print(t)


@app.command()
@_friendly
def prepare(
    data: Annotated[list[Path], typer.Argument(help="Examples: AgentInstruct, ShareGPT, OpenAI messages or trajectories.")],
    tokenizer: Annotated[str, typer.Option(help="HF id or path, .gguf or alias; llama3, mistral, tekken build the real ones offline.")],
    out: Annotated[Path, typer.Option(help="Output directory (train.parquet|jsonl, stats.json, manifest.json).")],
    max_len: Annotated[int, typer.Option(help="Sequence length (the paper: 4096).")] = 4096,
    pack: Annotated[bool, typer.Option(help="Best-fit-decreasing packing, padding-free (--no-pack: what the trainer reads).")] = True,
    policy: Annotated[str, typer.Option(help="Too long: truncate_turns (cut at a turn boundary) or drop.")] = "truncate_turns",
    template: Annotated[str | None, typer.Option(help="Chat template (default: the tokenizer's own): llama2-chat, llama3, mistral, chatml.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    show: Annotated[int, typer.Option(help="Print K examples with the trained tokens coloured.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that holds no earlier prepare output.")] = False,
) -> None:
    """Tokenise, mask (loss only on trained assistant turns), fit to max_len and pack examples for training.

    The --out folder is written fresh and swapped in when complete; no row to write is an error (exit 1)."""
    import time

    from agenttuning.stages import prepare as stage
    from agenttuning.tokens.prepare import load_tokenizer_by_name

    if fmt not in ("parquet", "jsonl"):
        raise ValueError("--format must be parquet or jsonl")
    if policy not in ("truncate_turns", "drop"):
        raise ValueError("--policy must be truncate_turns or drop")
    if max_len < 2:
        raise ValueError("--max-len must be at least 2")
    config = stage.PrepareConfig(max_len=max_len, pack=pack, length_policy=policy, chat_template=template, format=fmt)  # type: ignore[arg-type]
    tok = load_tokenizer_by_name(tokenizer)
    t0 = time.perf_counter()
    r = stage.run(config, data, tok, out, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    t = _metric_table(f"prepare → {out}")
    L = r.length
    t.add_row("examples in", f"{r.examples_in} " + str(r.sources))
    if r.rejected:
        t.add_row("rejected by the template", f"{r.rejected} (first: {r.first_rejection})")
    t.add_row(f"fitted to {max_len} ({L['policy']})", f"kept {L['kept']}, cut {L['cut']}, dropped {L['dropped']}")
    t.add_row("tokens lost", f"{L['tokens_total'] - L['tokens_kept']} of {L['tokens_total']}")
    t.add_row("trained tokens lost", f"{L['trained_total'] - L['trained_kept']} of {L['trained_total']}")
    for name, d in r.length_policies.items():
        t.add_row(f"  if {name}", f"loses {d['trained_total'] - d['trained_kept']} trained tokens")
    t.add_row("rows", str(r.rows))
    t.add_row("packing efficiency", f"{r.packing['efficiency']:.2%}")
    t.add_row("read+tokenise+mask+pack", f"{L['tokens_total'] / seconds:,.0f} tokens/s")
    console.print(t)
    if show:
        _show_prepared(config, data, tok, show)


def _show_prepared(config: Any, data: list[Path], tok: Any, k: int) -> None:
    """The first ``k`` examples rendered again (cheap) with their trained tokens coloured."""
    from agenttuning.data.reader import read_data
    from agenttuning.stages.prepare import prepare_examples
    from agenttuning.tokens.masks import visualize

    examples = [ex for p in data for ex in read_data(p).examples][: k * 4]  # a few spare for refused or too long ones
    _, _, kept = prepare_examples(config, examples, tok)
    for ex, enc in kept[:k]:
        console.rule(f"{ex.id} [{ex.source}/{ex.family}] {len(enc.input_ids)} tokens, {enc.num_trained} trained")
        console.print(visualize(enc, tok, max_tokens=2000))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_friendly
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/*.yaml); key=value arguments override it.")] = None,
) -> None:
    """Hybrid instruction tuning (full or LoRA) of any Hugging Face causal LM on prepared agent + general data.

    Multi-GPU / multi-node: accelerate launch --config_file configs/accelerate/<x>.yaml -m agenttuning.train ...
    """
    from agenttuning.train import ConfigError, load_config
    from agenttuning.train import train as run

    try:
        cfg = load_config(config, list(ctx.args))
        _check_train_paths(cfg)
    except ConfigError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    result = run(cfg)
    t = _metric_table(f"train → {result.output_dir}")
    t.add_row("steps", f"{result.steps} / {result.total_steps}")
    if result.losses:
        t.add_row("loss first → last", f"{result.losses[0]:.4f} → {result.losses[-1]:.4f}")
    for k, v in sorted(result.eval.items()):
        t.add_row(k, f"{v:.4f}")
    t.add_row("tokens (trained)", f"{result.tokens:,} ({result.trained_tokens:,})")
    t.add_row("tokens/s", f"{result.tokens_per_s:,.0f}")
    t.add_row("loss path", result.loss_impl)
    t.add_row("model", str(result.model_dir))
    console.print(t)


def _check_train_paths(cfg: Any) -> None:
    """Before any model loads: the model and tokenizer can be found and the data paths exist (ConfigError)."""
    from agenttuning.pipeline.config import check_model_path
    from agenttuning.train import ConfigError

    check_model_path(cfg.model, "model")  # its error is a ConfigError naming the key
    if cfg.tokenizer is not None:
        check_model_path(cfg.tokenizer, "tokenizer", model=False)
    for key in ("agent_data", "general_data"):
        path = getattr(cfg, key)
        if path is not None and not Path(path).expanduser().exists():
            raise ConfigError(f"{key}: no such file or folder {path!r}")


@app.command()
@_friendly
def serve(
    model: Annotated[str, typer.Argument(help="HF id or local folder, .gguf file or alias (docs/models.md).")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    served_name: Annotated[str | None, typer.Option(help="Model name clients send (default: MODEL).")] = None,
    backend: Annotated[str, typer.Option(help="auto (vLLM when installed, else transformers), hf or vllm.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Most concurrent requests per generate call.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Default reply length when a request sets none.")] = 512,
    temperature: Annotated[float, typer.Option(help="Default temperature when a request sets none.")] = 1.0,
    kv_reuse: Annotated[bool, typer.Option(
        help="hf backend: start each prompt from the longest already computed KV prefix (off: model.generate).",
    )] = True,
    kv_cache_mb: Annotated[int | None, typer.Option(
        help="hf backend: memory budget of the KV store in MiB (default 2048), least recently used evicted first.",
    )] = None,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body in MiB; larger ones get 413.")] = 4,
    max_prompt_chars: Annotated[int | None, typer.Option(
        help="Most characters of message content per request (default 16 per token of the model's context).",
    )] = None,
) -> None:
    """An OpenAI-compatible /v1/chat/completions server over a local model (rollouts and eval use openai:NAME)."""
    from agenttuning.models import resolve_model
    from agenttuning.serve import serve as run

    if backend not in ("auto", "hf", "vllm"):
        raise ValueError("--backend must be auto, hf or vllm")
    if max_body_mb < 1 or (max_prompt_chars is not None and max_prompt_chars < 1):
        raise ValueError("--max-body-mb and --max-prompt-chars must be positive")
    # a .gguf file or alias is served from its converted folder (vLLM too), under the name the user gave
    run(resolve_model(model), host=host, port=port, served_name=served_name or model, backend=backend,
        batch_size=batch_size, max_new_tokens_default=max_tokens, temperature_default=temperature,
        kv_reuse=kv_reuse, kv_cache_bytes=None if kv_cache_mb is None else kv_cache_mb << 20,
        max_body_bytes=max_body_mb << 20, max_prompt_chars=max_prompt_chars)


@app.command("env-serve")
@_friendly
def env_serve(
    env: Annotated[str, typer.Argument(help="A registered environment (agenttuning envs lists them).")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8100,
    max_instances: Annotated[int, typer.Option(help="Most live environment instances; more get 503.")] = 64,
    idle_timeout: Annotated[float, typer.Option(help="Seconds an unused instance lives before it is closed.")] = 600.0,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body in MiB; larger ones get 413.")] = 16,
) -> None:
    """Serve an environment over HTTP in AgentGym's environment-server protocol; play it with --env remote:URL."""
    from agenttuning.serve.env_app import serve_env

    if max_instances < 1 or idle_timeout <= 0 or max_body_mb < 1:
        raise ValueError("--max-instances, --idle-timeout and --max-body-mb must be positive")
    serve_env(env, host=host, port=port, max_instances=max_instances, idle_s=idle_timeout,
              max_body_bytes=max_body_mb << 20)


@app.command("eval")
@_friendly
def eval_(
    out: Annotated[Path, typer.Option(help="Output directory (<env>.jsonl trajectories, results.json last).")],
    policy: Annotated[str, typer.Option(help="openai:MODEL, hf:PATH_OR_ID, expert, wrong, noisy:P or random.")] = "expert",
    envs: Annotated[str, typer.Option(help="Comma-separated env names/ids, or held-in, held-out, all.")] = "all",
    held_in: Annotated[str | None, typer.Option(help="Training data (AgentInstruct dir) or comma-separated families.")] = None,
    n: Annotated[int | None, typer.Option("-n", help="Only the first N test tasks of each environment.")] = None,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight at once.")] = 8,
    max_turns: Annotated[int | None, typer.Option(help="Turn budget (default: each environment's).")] = None,
    timeout: Annotated[float, typer.Option(help="Per-episode wall-clock limit in seconds.")] = 600.0,
    base_url: Annotated[str | None, typer.Option(help="openai: endpoint (default $OPENAI_BASE_URL).")] = None,
    api_key: Annotated[str | None, typer.Option(help="openai: key (default $OPENAI_API_KEY).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (model policies).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens (model policies).")] = None,
) -> None:
    """Agent evaluation: the test split of every selected environment, success and reward with 95% intervals."""
    from agenttuning.eval.agent import evaluate_agent
    from agenttuning.policies.specs import parse_policy_spec
    from agenttuning.rollout.engine import EpisodeLimits

    spec = parse_policy_spec(policy)  # a bad spec is an error before anything is read or run
    families: Any = None
    if held_in is not None:
        families = held_in if Path(held_in).exists() else {f.strip() for f in held_in.split(",") if f.strip()}
    result = evaluate_agent(
        spec, [e.strip() for e in envs.split(",") if e.strip()], held_in=families, out_dir=out, n=n,
        concurrency=concurrency, limits=EpisodeLimits(max_turns=max_turns, timeout_s=timeout),
        policy_options=_policy_options(spec, base_url, api_key, temperature, max_tokens, None),
    )
    console.print(result.table())
    console.print(f"[dim]{out / 'results.json'}[/]")


@app.command("score")
@_friendly
def overall_score(
    results: Annotated[list[str], typer.Argument(help="NAME=path/to/results.json for each model compared.")],
    metric: Annotated[str, typer.Option(help="mean_reward or success_rate.")] = "mean_reward",
    normalisers: Annotated[Path | None, typer.Option(help="Fixed normalisers JSON {env_id: value}.")] = None,
) -> None:
    """The paper's overall score: per group, the mean over tasks of score / the task's mean over the models."""
    from agenttuning.eval.score import (
        load_normalisers,
        overall_report,
        scores_from_results,
    )

    if metric not in ("mean_reward", "success_rate"):
        raise ValueError("--metric must be mean_reward or success_rate")
    named = {}
    for item in results:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{item!r}: expected NAME=path/to/results.json")
        named[name] = path
    scores, groups = scores_from_results(named, metric)  # type: ignore[arg-type]
    report = overall_report(scores, groups, load_normalisers(normalisers) if normalisers else None)
    console.print(report.table())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_friendly
def pipeline(
    ctx: typer.Context,
    config: Annotated[str, typer.Argument(help="Pipeline YAML, or 'default' for the embedded CPU demo.")] = "default",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    until: Annotated[str | None, typer.Option(help="Stop after this stage (e.g. construction: the data only); "
                                              "no report then.")] = None,
) -> None:
    """(instruct →) tasks → rollout → filter → construction → decontaminate → prepare → mix → train → eval → report;
    done stages are skipped.

    Extra arguments override config keys: ``agenttuning pipeline cfg.yaml mix.eta=0.5 out=runs/x``.
    """
    from agenttuning.pipeline import load_pipeline_config, run_pipeline

    _library_progress(progress)
    config, overrides = _config_and_overrides(config, list(ctx.args))
    cfg = load_pipeline_config(config, overrides)
    _print_run(run_pipeline(cfg, console=err, progress=progress, until=until))


def _print_run(run: Any) -> None:
    """What ``pipeline`` and ``sweep`` print at the end: the stages, the headline, where the report is."""
    from agenttuning.pipeline.run import construction_console_table, headline_console_table, stages_table

    console.print(stages_table(run))
    if "construction" in run.records:
        console.print(construction_console_table(run))
    if {"eval-base", "eval-tuned"} <= set(run.records):
        console.print(headline_console_table(run))
    if run.report is not None:
        console.print(f"report: [bold]{run.out / 'report' / 'report.html'}[/] (and report.md, trajectories.html)")


def _library_progress(progress: bool) -> None:
    """``--no-progress`` also silences the libraries' own bars (transformers' weight loading and GGUF conversion,
    the hub's), which would otherwise fill a log with carriage-return lines. The variable reaches child processes."""
    if progress:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # read at import time: an already imported transformers is told directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _config_and_overrides(config: str, args: list[str]) -> tuple[str, list[str]]:
    """``agenttuning pipeline mix.eta=0.5`` means the default config with that override (not a file of that name)."""
    if "=" in config and not Path(config).exists():
        return "default", [config, *args]
    return config, args


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_friendly
def sweep(
    ctx: typer.Context,
    config: Annotated[str, typer.Argument(help="Pipeline YAML, or 'default'.")] = "default",
    eta: Annotated[str | None, typer.Option(help="Comma-separated eta values (default: the config's sweep.eta).")] = None,
    unfiltered: Annotated[bool | None, typer.Option(help="Also train on unfiltered trajectories.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """The paper's ablations in shape: the pipeline over eta values, and filtered vs unfiltered trajectories."""
    from agenttuning.pipeline import load_pipeline_config, run_sweep

    config, overrides = _config_and_overrides(config, list(ctx.args))
    if eta is not None:
        overrides.append(f"sweep.eta=[{eta}]")
    if unfiltered is not None:
        overrides.append(f"sweep.unfiltered={str(unfiltered).lower()}")
    _library_progress(progress)
    cfg = load_pipeline_config(config, overrides)
    _print_run(run_sweep(cfg, console=err, progress=progress))


def _metric_table(title: str) -> Table:
    """The two-column metric / value table the stage commands print."""
    t = Table(title=title, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    return t


def _split(split: str) -> Any:
    if split not in ("train", "test"):
        raise ValueError(f"--split must be train or test, not {split!r}")
    return split


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

