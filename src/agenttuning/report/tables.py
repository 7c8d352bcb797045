"""The report's other tables: general abilities, the eta sweep, data statistics, teacher rollouts, training, provenance.

Each function takes what the readers of :mod:`agenttuning.report.inputs` returned and gives a
:class:`~agenttuning.report.document.Table`; nothing here reads a file.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttuning.data.construction import ConstructionTable
from agenttuning.eval.score import load_normalisers, overall_report
from agenttuning.report.document import Table
from agenttuning.report.headline import (
    GROUPS,
    Headline,
    fmt_delta,
    fmt_pct,
    load_agents,
)
from agenttuning.report.inputs import (
    ReportInputError,
    ReportInputs,
    SweepPoint,
    TrainCurves,
    load_general,
)
from agenttuning.schema import Trajectory

__all__ = ["Sweep", "SweepRow", "agentinstruct_table", "behaviour_table", "compute_sweep", "data_table", "decontam_line", "general_table", "mix_table",
           "provenance_table", "sweep_table", "teacher_table", "training_table"]  # fmt: skip

# the general-eval fields shown, in order: (key, label, higher is better)
GENERAL_ROWS = (("loss", "loss (nats / trained token)", False), ("perplexity", "perplexity", False),
                ("exact_match", "exact match", True))  # fmt: skip
GENERAL_COUNTS = ("n", "tokens", "truncated", "em_scored", "em_skipped", "em_tokens")


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


# ------------------------------------------------------------------------------------------------------------
# General abilities


def general_table(general: Mapping[str, Mapping[str, float]]) -> Table:
    """Rows: loss, perplexity, exact match (then any other numeric field); columns: the models, and the change
    from the first to the last when there are two or more."""
    models = list(general)
    delta = len(models) > 1
    header = ["metric"] + models + (["Δ (last − first)", "better"] if delta else ["better"])
    rows = []
    for key, label, higher in GENERAL_ROWS:
        vals = [general[m][key] for m in models]
        cells = [fmt_pct(v) if key == "exact_match" else f"{v:.4f}" for v in vals]
        if delta:
            cells.append(fmt_delta(vals[-1], vals[0], "pp") if key == "exact_match" else
                         fmt_delta(vals[-1], vals[0], "reward"))  # fmt: skip
        rows.append([label, *cells, "higher" if higher else "lower"])
    known = {k for k, _, _ in GENERAL_ROWS}
    extra = sorted({k for m in models for k in general[m]} - known)
    for key in [k for k in GENERAL_COUNTS if k in extra] + [k for k in extra if k not in GENERAL_COUNTS]:
        cells = [_num(general[m][key]) if key in general[m] else "-" for m in models]
        rows.append([key, *cells, *(["", ""] if delta else [""])])
    return Table(header, rows)


# ------------------------------------------------------------------------------------------------------------
# The eta sweep


@dataclass(frozen=True)
class SweepRow:
    point: SweepPoint
    overall: dict[str, float]  # group -> overall score (absent: no usable task)
    general: dict[str, float] | None


@dataclass(frozen=True)
class Sweep:
    """The sweep points (sorted: filtered first, then by eta) and the report's models, scored together."""

    rows: list[SweepRow]
    models: dict[str, dict[str, float]]  # the report's models: group -> overall, on the same normalisers
    normalisers: dict[str, float]
    fixed: bool
    base_general_loss: float | None  # the base model's general loss, the reference line of the general panel


def compute_sweep(inputs: ReportInputs, headline: Headline) -> Sweep:
    """Overall scores of every sweep point, normalised together with the report's models (or by the fixed
    normalisers, when given), so the points and the base model are on one scale."""
    require_unique_labels([p.label for p in inputs.sweep], "sweep point", inputs.sweep[0].agent)
    paths: dict[str, Path] = {f"model:{m}": a.path for m, a in headline.agents.items()}
    paths.update({f"sweep:{p.label}": p.agent for p in inputs.sweep})
    agents = load_agents(paths)
    groups = next(iter(agents.values())).result.groups()
    scores = {k: a.result.scores(inputs.metric) for k, a in agents.items()}
    norms = load_normalisers(inputs.normalisers) if inputs.normalisers is not None else None
    report = overall_report(scores, groups, norms)
    rows = []
    for p in inputs.sweep:
        general = load_general(p.general) if p.general is not None else None
        rows.append(SweepRow(p, dict(report.scores[f"sweep:{p.label}"]), general))
    rows.sort(key=lambda r: (not r.point.filtered, r.point.eta, r.point.label))
    models = {m: dict(report.scores[f"model:{m}"]) for m in headline.agents}
    base = inputs.general.get(inputs.base) if len(inputs.agent) > 1 else None
    base_loss = load_general(base)["loss"] if base is not None else None
    return Sweep(rows, models, report.normalisers, report.fixed_normalisers, base_loss)


def sweep_table(sweep: Sweep) -> Table:
    out = []
    for r in sweep.rows:
        cells = [f"{r.overall[g]:.2f}" if g in r.overall else "-" for g in GROUPS]
        g = r.general
        cells += [f"{g['loss']:.4f}", fmt_pct(g["exact_match"])] if g else ["-", "-"]
        out.append([r.point.label, f"{r.point.eta:g}", "filtered" if r.point.filtered else "unfiltered", *cells])
    return Table(["variant", "eta", "agent data", "held-in overall", "held-out overall", "general loss",
                  "general exact match"], out, align="lrlrrrr")  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Data


def agentinstruct_table(table: ConstructionTable) -> Table:
    """The construction table (the paper's Table 1): per family and task source, instructions -> verified tasks ->
    trajectories -> kept, mean turns of the kept, keep ratio (the ``all`` row emphasised)."""
    rows, emphasis = [], set()
    for i, r in enumerate(table.rows):
        rows.append([r.env, r.source, f"{r.instructions:,}", f"{r.verified:,}", f"{r.trajectories:,}", f"{r.kept:,}",
                     f"{r.mean_turns:.1f}", fmt_pct(r.keep_ratio)])  # fmt: skip
        if r.env == "all":
            emphasis.add(i)
    return Table(["environment", "tasks from", "instructions", "verified tasks", "trajectories", "kept",
                  "mean turns (kept)", "keep ratio"], rows, align="llrrrrrr", emphasis=frozenset(emphasis))  # fmt: skip


def data_table(stats: Mapping[str, Any]) -> Table:
    """The filter's per-environment rows of ``stats.json`` (the last row, ``all``, emphasised)."""
    rows, emphasis = [], set()
    for i, r in enumerate(stats["envs"]):
        dropped = ", ".join(f"{k} {v}" for k, v in r.get("dropped", {}).items()) or "-"
        total, kept = int(r["total"]), int(r["kept"])
        pct = r.get("kept_pct", 100 * kept / total if total else 0.0)
        rows.append([r["env"], str(total), str(kept), f"{pct:.1f}%", f"{r.get('mean_turns', 0):.1f}",
                     f"{r.get('mean_tokens', 0):.0f}", dropped])  # fmt: skip
        if r["env"] == "all":
            emphasis.add(i)
    return Table(["environment", "total", "kept", "kept %", "mean turns", "mean tokens", "dropped (reason n)"],
                 rows, align="lrrrrrl", emphasis=frozenset(emphasis))  # fmt: skip


def decontam_line(stats: Mapping[str, Any]) -> str | None:
    """One sentence on the decontamination step after filtering, or None when stats.json has no such section."""
    d = stats.get("decontam")
    if d is None:
        return None
    passed = next((int(r["kept"]) for r in stats["envs"] if r["env"] == "all"), None)
    dropped = d.get("dropped") or {}
    why = ", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"
    lead = f"Of the {passed} trajectories the filter kept, " if passed is not None else ""
    return (f"{lead}decontamination and deduplication dropped {sum(dropped.values())} ({why}), "
            f"leaving **{d['kept']}** for training.")  # fmt: skip


def settings_line(stats: Mapping[str, Any]) -> str | None:
    s = stats.get("settings")
    if not isinstance(s, Mapping) or not s:
        return None
    return "Filter settings: " + ", ".join(f"`{k}` = `{v}`" for k, v in s.items()) + "."


def mix_table(mix: Mapping[str, Any]) -> Table:
    """One epoch of the eta-mixture as the mix stage describes it (``metrics.json``)."""
    labels = (("eta", "eta (agent share asked)"), ("agent_share", "agent share realised"),
              ("agent_token_share", "agent share of the tokens"), ("n_agent", "agent examples (prepared)"),
              ("n_general", "general examples (prepared)"), ("n", "draws described"),
              ("epoch_length", "epoch length (draws)"), ("seed", "seed"))  # fmt: skip
    rows = [[label, f"{mix[k]:g}" if isinstance(mix[k], float) else str(mix[k])] for k, label in labels if k in mix]
    return Table(["mixture", "value"], rows, align="lr")


def teacher_table(files: Mapping[str, Sequence[Trajectory]]) -> Table:
    """Per teacher file and environment: episodes, success, mean reward, steps, end reasons, tokens."""
    rows = []
    for name, trajs in files.items():
        by_env: dict[str, list[Trajectory]] = {}
        for t in trajs:
            by_env.setdefault(t.task.env, []).append(t)
        for env, ts in sorted(by_env.items()):
            n = len(ts)
            ended = Counter(t.end_reason for t in ts)
            tokens = sum(t.usage.prompt_tokens + t.usage.completion_tokens for t in ts)
            policies = ", ".join(sorted({t.policy for t in ts}))
            rows.append([Path(name).name, policies, env, str(n), fmt_pct(sum(t.success for t in ts) / n),
                         f"{sum(t.reward for t in ts) / n:.3f}", f"{sum(len(t.steps) for t in ts) / n:.1f}",
                         ", ".join(f"{k} {v}" for k, v in sorted(ended.items(), key=lambda kv: (-kv[1], kv[0]))),
                         f"{tokens:,}" if tokens else "-"])  # fmt: skip
    return Table(["file", "policy", "environment", "episodes", "success", "mean reward", "mean steps", "ended",
                  "tokens"], rows, align="lllrrrrlr")  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Training


def training_table(curves: TrainCurves) -> Table:
    rows = []
    steps, loss = curves.series("loss")
    if steps:
        rows.append(["steps logged", f"{len(steps)} (last step {steps[-1]})"])
        rows.append(["train loss: first → last", f"{loss[0]:.4f} → {loss[-1]:.4f}"])
    for key, label in (("eval_agent_loss", "eval agent loss"), ("eval_general_loss", "eval general loss")):
        s, v = curves.series(key, source="eval")
        if s:
            rows.append([f"{label}: step {s[0]} → {s[-1]}", f"{v[0]:.4f} → {v[-1]:.4f}"])
    _, tps = curves.series("tokens_per_s")
    if tps:
        rows.append(["tokens/s (median)", f"{statistics.median(tps):,.0f}"])
    _, tokens = curves.series("tokens")
    if tokens:
        rows.append(["tokens seen", f"{int(math.fsum(tokens)):,}"])
    _, lr = curves.series("lr")
    if lr:
        rows.append(["peak learning rate", f"{max(lr):.3g}"])
    return Table(["training", "value"], rows, align="lr")


# ------------------------------------------------------------------------------------------------------------
# Provenance


def provenance_table(inputs: ReportInputs, headline: Headline) -> Table:
    """The caller's provenance first, then what the results files themselves record."""
    rows = [[k, v] for k, v in inputs.provenance.items()]
    for m, a in headline.agents.items():
        r = a.result
        held_in = ", ".join(r.held_in) if r.held_in else "none (every environment held-out)"
        n = r.n if r.n is not None else "all"
        what = f"`{a.path}`: policy `{r.policy}`, held-in {held_in}, n {n}, written {r.created}, {r.wall_time_s:.1f} s"
        rows.append([f"agent eval · {m}", what])
    envs = ", ".join(f"`{t}` (prompt {headline.env(headline.models[0], t).prompt_hash})" for t in headline.envs)
    rows.append(["environments", envs])
    for m, p in inputs.general.items():
        rows.append([f"general eval · {m}", f"`{p}`"])
    for label, p in (("data stats", inputs.data_stats), ("mix", inputs.mix), ("training metrics",
                     inputs.train_metrics), ("normalisers", inputs.normalisers)):  # fmt: skip
        if p is not None:
            rows.append([label, f"`{p}`"])
    for p in inputs.teacher_trajectories:
        rows.append(["teacher trajectories", f"`{p}`"])
    return Table(["what", "value"], rows, align="ll")


def require_unique_labels(names: Sequence[str], what: str, where: Path) -> None:
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ReportInputError(where, f"{what} labels must be unique, {dup} repeats")


def behaviour_table(trajectories: Mapping[str, Mapping[str, Sequence[Trajectory]]]) -> Table:
    """How each model acts, from its evaluation trajectories: what success rates alone do not show.

    ``trajectories`` maps model -> env id -> trajectories. Per row: the share of replies with a parsable
    Thought/Action, the share of episodes the agent ended itself (an answer, not a budget), and the mean steps.
    """
    rows = []
    for model, by_env in trajectories.items():
        for env_id, trajs in by_env.items():
            steps = [st for t in trajs for st in t.steps]
            parsable = sum(st.parse_error is None for st in steps)
            ended = sum(t.end_reason == "done" for t in trajs)
            n = len(trajs)
            rows.append([model, env_id, str(n), fmt_pct(parsable / len(steps)) if steps else "-",
                         fmt_pct(ended / n) if n else "-", f"{len(steps) / n:.1f}" if n else "-"])  # fmt: skip
    return Table(["model", "environment", "episodes", "parsable replies", "ended by the agent", "mean steps"], rows,
                 align="llrrrr")
