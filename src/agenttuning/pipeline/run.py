"""Run the pipeline: plan every stage's key, skip the ones whose output exists, run the rest, write the report.

Keys depend only on settings and upstream keys, never on outputs, so the whole plan is known before anything runs
(:func:`plan`): a re-run with nothing changed finds every manifest and runs nothing; changing ``mix.eta`` changes the
keys of mix, train, eval-tuned and report only. ``agenttuning sweep`` (:func:`run_sweep`) runs variants of one config
into the same ``stages/`` folder, so they share everything upstream of what they change.

A run holds an exclusive lock on its ``out`` folder (``out/.lock``) from start to end, so a second
``agenttuning pipeline`` on the same folder fails at once with a clear error instead of racing the first one's stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agenttuning.jsonl import locked, write_text_atomic
from agenttuning.pipeline.cache import StageDir, stage_key
from agenttuning.config import override
from agenttuning.pipeline.config import PipelineConfig
from agenttuning.stages.manifest import Manifest
from agenttuning.pipeline.stages import STAGES, Stage, StageContext, StageRecord

__all__ = ["PipelineRun", "PlannedStage", "construction_console_table", "plan", "run_pipeline", "run_sweep",
           "sweep_variants"]

REPORT_VERSION = 2  # 2: the construction table
LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run folders locked by this process -> the thread holding each


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s run lock (LockedError if another process holds it); re-entrant for the thread holding it,
    since a sweep runs each variant's pipeline into the folder it has locked."""
    key = Path(out).resolve()
    if _held.get(key) == threading.get_ident():
        yield
        return
    with locked(key / LOCK_FILE, "this pipeline run folder"):
        _held[key] = threading.get_ident()
        try:
            yield
        finally:
            del _held[key]


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    key: str
    inputs: dict[str, str]  # upstream stage name -> key


@dataclass
class PipelineRun:
    """What a run did: every stage's record (ran or cached), the report folder, the wall time."""

    config: PipelineConfig
    out: Path
    records: dict[str, StageRecord]
    report: Path | None = None
    seconds: float = 0.0
    sweep: list[Any] = field(default_factory=list)

    def ran(self) -> list[str]:
        """Names of the stages this run executed (not found complete)."""
        return [name for name, r in self.records.items() if r.status == "ran"]


def plan(config: PipelineConfig) -> list[PlannedStage]:
    """Every active stage with its content key, in run order (pure: reads settings, runs nothing)."""
    keys: dict[str, str] = {}
    out: list[PlannedStage] = []
    for stage in STAGES:
        if not stage.when(config):
            continue
        inputs = {name: keys[name] for name in stage.inputs if name in keys}
        key = stage_key(stage.name, stage.settings(config), inputs, version=stage.version)
        keys[stage.name] = key
        out.append(PlannedStage(stage, key, inputs))
    return out


def _record(sd: StageDir, status: str, manifest: Manifest | None) -> StageRecord:
    if manifest is None:
        return StageRecord(sd.name, sd.key, sd.path, {}, status, 0.0)
    return StageRecord(sd.name, sd.key, sd.path, manifest.result, status, manifest.seconds)


def _run_stage(p: PlannedStage, config: PipelineConfig, records: dict[str, StageRecord], console: Console,
               progress: bool) -> StageRecord:  # fmt: skip
    sd = StageDir.at(config.out, p.stage.name, p.key)
    manifest = sd.manifest()
    if sd.complete() and manifest is not None:
        console.print(f"[green]✓[/] {p.stage.name:<13} [dim]cached  {sd.path}[/]", highlight=False)
        return _record(sd, "cached", manifest)
    console.rule(f"[bold]{p.stage.name}[/] [dim]{sd.path}[/]")
    sd.prepare(keep_partial=p.stage.resumable)
    t0 = time.perf_counter()
    ctx = StageContext(config, sd.path, {k: records[k] for k in p.inputs}, console=console, progress=progress)
    result = p.stage.run(ctx)
    seconds = time.perf_counter() - t0
    manifest = sd.finish(settings=p.stage.settings(config), inputs=p.inputs, result=result, seconds=seconds)
    console.print(f"[green]✓[/] {p.stage.name:<13} ran in {seconds:.1f} s", highlight=False)
    return _record(sd, "ran", manifest)


def _quiet_transformers() -> None:
    """transformers' per-load progress bars ("Loading weights") would bury the stage lines; its warnings stay."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # core install without the hf extra: nothing to quiet
        return
    hf_logging.disable_progress_bar()


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (relative symlink, replaced atomically)."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def run_pipeline(config: PipelineConfig, *, console: Console | None = None, progress: bool = True,
                 report: bool = True, sweep: list[Any] | None = None, until: str | None = None) -> PipelineRun:  # fmt: skip
    """Run (or find done) every stage of ``config``, then the report; see the module docstring.

    ``until`` names a stage to stop after (say ``construction``: build the AgentInstruct data only); no report then.
    """
    stages = plan(config)
    names = [p.stage.name for p in stages]
    if until is not None and until not in names:
        raise ValueError(f"until: {until!r} is not a stage of this run (its stages: {', '.join(names)})")
    console = console or Console(stderr=True)
    _quiet_transformers()
    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        records: dict[str, StageRecord] = {}
        for p in stages:
            records[p.stage.name] = _run_stage(p, config, records, console, progress)
            if p.stage.name == until:
                break
        run = PipelineRun(config, out, records, sweep=list(sweep or []))
        if report and until is None:
            run.report = _report(run, console)
            _link(out / "report", run.report)
        run.seconds = time.perf_counter() - t0
        _write_run(run)
    return run


# ------------------------------------------------------------------------------------------------------------
# Report


def _report_key(run: PipelineRun) -> str:
    inputs = {name: r.key for name, r in run.records.items()}
    points = [{"label": p.label, "eta": p.eta, "filtered": p.filtered, "agent": str(p.agent),
               "general": str(p.general)} for p in run.sweep]  # fmt: skip
    settings = {"name": run.config.name, "viewer_per_env": run.config.report.viewer_per_env, "sweep": points}
    return stage_key("report", settings, inputs, version=REPORT_VERSION)


def report_inputs(run: PipelineRun) -> Any:
    """The :class:`~agenttuning.report.ReportInputs` of a run: only files written by its stages."""
    from agenttuning.report import ReportInputs

    r = run.records
    cfg = run.config

    def path(stage: str, output: str) -> Path | None:
        rec = r.get(stage)
        return rec.dir / rec.result[output] if rec is not None and output in rec.result else None

    agent = {"base": path("eval-base", "results"), "tuned": path("eval-tuned", "results")}
    general = {k: v for k, v in (("base", path("eval-base", "general")), ("tuned", path("eval-tuned", "general")))
               if v is not None}  # fmt: skip
    rollout = r["rollout"]
    train = r["train"].result
    model_desc = cfg.model.name
    if cfg.model.name.startswith("scratch:"):
        model_desc += f" (Llama architecture, random init seed {cfg.model.seed}, trained from scratch here)"
    provenance = {
        "teacher": f"{cfg.teacher.policy} in {', '.join(cfg.teacher.envs)} ({cfg.teacher.split} split)",
        "general data": r["general"].result.get("source", cfg.general.source),
        "model": model_desc,
        "tokenizer": (f"byte-level BPE, vocab {cfg.model.vocab_size}, trained on this run's trajectories and "
                      "general text" if "tokenizer" in r else str(cfg.model.tokenizer or cfg.model.name)),
        "eta": str(cfg.mix.eta),
        "filtering": "reward >= %s" % cfg.filter.min_reward if cfg.filter.enabled else "off (every trajectory kept)",
        "training": f"{train.get('steps')} steps, {train.get('tokens', 0):,} tokens, "
                    f"{train.get('tokens_per_s', 0):,.0f} tokens/s",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "stages": ", ".join(f"{n}={rec.key[:12]}" for n, rec in r.items()),
    }  # fmt: skip
    return ReportInputs(
        title=f"{cfg.name}: AgentTuning report",
        agent={k: v for k, v in agent.items() if v is not None},
        general=general,
        data_stats=path("decontaminate", "stats"),
        construction=path("construction", "construction"),
        mix=path("mix", "metrics"),
        train_metrics=path("train", "metrics"),
        teacher_trajectories=[rollout.dir / f for f in rollout.result["files"]],
        sweep=list(run.sweep),
        provenance=provenance,
        notes=_notes(run),
        viewer_per_env=cfg.report.viewer_per_env,
    )


def _notes(run: PipelineRun) -> list[str]:
    notes = []
    if run.config.model.name.startswith("scratch:"):
        notes.append(
            "The model here is a small Llama-architecture network initialised at random and trained from scratch on "
            "this machine in minutes, with a tokenizer trained on the run's own data. Its scores are what it "
            "actually achieves: the base model has never seen text, so it scores zero, and whatever the tuned model "
            "scores it learned from this run's data alone. Point `model.name` at a real chat model (any Hugging "
            "Face id or folder) to reproduce the paper's setting."
        )
    return notes


def _report(run: PipelineRun, console: Console) -> Path:
    from agenttuning.report import build_report

    sd = StageDir.at(run.config.out, "report", _report_key(run))
    if sd.complete():
        console.print(f"[green]✓[/] {'report':<13} [dim]cached  {sd.path}[/]", highlight=False)
        run.records["report"] = _record(sd, "cached", sd.manifest())
        return sd.path
    console.rule(f"[bold]report[/] [dim]{sd.path}[/]")
    sd.prepare(keep_partial=False)
    t0 = time.perf_counter()
    paths = build_report(report_inputs(run), sd.path)
    outputs = {"markdown": "report.md", "html": "report.html", "viewer": "trajectories.html",
               "headline": getattr(paths, "headline", "")}  # fmt: skip
    manifest = sd.finish(settings={"sweep": len(run.sweep)}, inputs={n: r.key for n, r in run.records.items()},
                         result=outputs, seconds=time.perf_counter() - t0)  # fmt: skip
    run.records["report"] = _record(sd, "ran", manifest)
    return sd.path


def _write_run(run: PipelineRun) -> None:
    doc = {
        "config": run.config.model_dump(mode="json"),
        "seconds": round(run.seconds, 2),
        "report": str(run.report) if run.report else None,
        "stages": {n: {"key": r.key, "dir": str(r.dir), "status": r.status, "seconds": r.seconds}
                   for n, r in run.records.items()},
    }  # fmt: skip
    write_text_atomic(run.out / "run.json", json.dumps(doc, indent=2) + "\n")


def stages_table(run: PipelineRun) -> Table:
    """One row per stage: ran or cached, seconds, folder."""
    t = Table(title=f"pipeline · {run.config.name} · {run.seconds:.1f} s", header_style="bold")
    for col in ("stage", "status", "seconds", "output"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for name, r in run.records.items():
        style = "green" if r.status == "ran" else "dim"
        t.add_row(name, f"[{style}]{r.status}[/]", f"{r.seconds:.1f}" if r.status == "ran" else "-", str(r.dir))
    return t


def construction_console_table(run: PipelineRun) -> Table:
    """The construction table (the paper's Table 1) of the run, as the report has it."""
    from agenttuning.report.inputs import load_construction

    rec = run.records["construction"]
    table = load_construction(rec.dir / rec.result["construction"])
    t = Table(title="AgentInstruct construction", header_style="bold")
    for col in ("env", "tasks from", "instructions", "verified", "trajectories", "kept", "mean turns", "keep ratio"):
        t.add_column(col, justify="left" if col in ("env", "tasks from") else "right")
    for r in table.rows:
        t.add_row(r.env, r.source, str(r.instructions), str(r.verified), str(r.trajectories), str(r.kept),
                  f"{r.mean_turns:.1f}", f"{r.keep_ratio:.1%}", style="bold" if r.env == "all" else None)  # fmt: skip
    return t


def headline_console_table(run: PipelineRun) -> Table:
    """Base vs tuned per environment (success rate), held-in first."""
    from agenttuning.eval.agent import load_agent_result

    t = Table(title="base vs tuned (success rate on the test split)", header_style="bold")
    for col in ("group", "env", "n", "base", "tuned", "change"):
        t.add_column(col, justify="left" if col in ("group", "env") else "right")
    base = load_agent_result(run.records["eval-base"].dir / "agent")
    tuned = {e.env_id: e for e in load_agent_result(run.records["eval-tuned"].dir / "agent").envs}
    for e in sorted(base.envs, key=lambda e: (e.group != "held-in", e.env_id)):
        after = tuned.get(e.env_id)
        if after is None:
            continue
        delta = after.success_rate - e.success_rate
        t.add_row(e.group, e.env_id, str(e.n), f"{e.success_rate:.1%}", f"{after.success_rate:.1%}",
                  f"{delta:+.1%}")  # fmt: skip
    return t


# ------------------------------------------------------------------------------------------------------------
# Sweep


def sweep_variants(config: PipelineConfig) -> list[tuple[str, PipelineConfig, float, bool]]:
    """``(label, config, eta, filtered)`` for each variant: every sweep eta (filtered), and unfiltered at ``mix.eta``."""
    variants = []
    for eta in dict.fromkeys([*config.sweep.eta]):
        filtered = override(config, [f"mix.eta={eta}", "filter.enabled=true"])
        variants.append((f"eta={eta:g}", filtered, eta, True))
    if config.sweep.unfiltered:
        eta = config.mix.eta
        unfiltered = override(config, ["filter.enabled=false"])
        variants.append((f"eta={eta:g} unfiltered", unfiltered, eta, False))
    return variants


def run_sweep(config: PipelineConfig, *, console: Console | None = None, progress: bool = True) -> PipelineRun:
    """Run every variant (sharing stages), then the main config with the sweep section in its report."""
    from agenttuning.report import SweepPoint

    console = console or Console(stderr=True)
    points = []
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # for the whole sweep, not per variant: no other run slips in between
        for label, variant, eta, filtered in sweep_variants(config):
            console.rule(f"[bold magenta]sweep variant {label}[/]")
            run = run_pipeline(variant, console=console, progress=progress, report=False)
            tuned = run.records["eval-tuned"]
            general = tuned.dir / tuned.result["general"] if "general" in tuned.result else None
            points.append(SweepPoint(label=label, eta=eta, filtered=filtered,
                                     agent=tuned.dir / tuned.result["results"], general=general))  # fmt: skip
        console.rule("[bold magenta]main run + report[/]")
        return run_pipeline(config, console=console, progress=progress, report=True, sweep=points)
