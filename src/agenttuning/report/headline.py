"""The headline: per-environment success rate and mean reward before vs after tuning, and the overall scores.

Every number is read from the models' ``results.json`` (the 95% intervals too: Wilson for the success rate,
the seeded bootstrap for the mean reward, as :mod:`agenttuning.eval.agent` computed them); the overall score per
group is :func:`agenttuning.eval.score.overall_report` on those results' scores, with fixed normalisers when given
and otherwise the mean over the models of the report (AgentTuning §3.1)::

    norm[t]       = mean over the reference models r of s[r][t]
    overall[m][g] = mean over the tasks t of group g with norm[t] > 0 of s[m][t] / norm[t]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agenttuning.eval.agent import AgentEvalResult, EnvResult
from agenttuning.eval.score import OverallReport, load_normalisers, overall_report
from agenttuning.report.document import Table
from agenttuning.report.inputs import ReportInputError, ReportInputs, load_agent

__all__ = [
    "FORMULA",
    "GROUPS",
    "Headline",
    "compute_headline",
    "fmt_delta",
    "fmt_pct",
    "headline_markdown", "headline_table",
    "load_agents",
    "overall_table",
    "per_model_table",
]  # fmt: skip

GROUPS = ("held-in", "held-out")
FORMULA = (
    "norm[t] = mean over the reference models r of s[r][t];  "
    "overall[m][g] = mean over the tasks t of group g with norm[t] > 0 of s[m][t] / norm[t]"
)


@dataclass(frozen=True)
class LoadedAgent:
    label: str
    path: Path  # as given
    result: AgentEvalResult
    results_dir: Path


@dataclass(frozen=True)
class Headline:
    """The models' results, the environments in display order (held-in first) and their overall scores."""

    agents: dict[str, LoadedAgent]
    envs: list[str]  # env ids, held-in first, then by id
    overall: OverallReport
    metric: str

    @property
    def models(self) -> list[str]:
        return list(self.agents)

    @property
    def pair(self) -> list[str]:
        """The models compared in the headline: [base, tuned], or one model alone."""
        models = self.models
        return [models[0], models[-1]] if len(models) > 1 else models[:1]

    def env(self, model: str, env_id: str) -> EnvResult:
        return next(e for e in self.agents[model].result.envs if e.env_id == env_id)


def load_agents(paths: Mapping[str, Path]) -> dict[str, LoadedAgent]:
    """Load every model's results and check they are comparable (same environments, prompt hashes and groups)."""
    out: dict[str, LoadedAgent] = {}
    reference: tuple[str, dict[str, tuple[str, str]]] | None = None
    for label, path in paths.items():
        result, results_dir = load_agent(path)
        key = {e.env_id: (e.prompt_hash, e.group) for e in result.envs}
        if reference is None:
            reference = (label, key)
        elif key != reference[1]:
            raise ReportInputError(
                path, f"its environments, prompt hashes or held-in groups differ from those of {reference[0]!r}: "
                "scores are comparable only on the same environments, prompts and held-in families")  # fmt: skip
        out[label] = LoadedAgent(label, Path(path), result, results_dir)
    return out


def compute_headline(inputs: ReportInputs, agents: dict[str, LoadedAgent] | None = None) -> Headline:
    """Load the agent results of ``inputs`` and compute the overall score per group with :mod:`eval.score`."""
    agents = agents if agents is not None else load_agents(inputs.agent)
    first = next(iter(agents.values())).result
    envs = [e.env_id for e in sorted(first.envs, key=lambda e: (e.group != "held-in", e.env_id))]
    groups = first.groups()
    scores = {m: a.result.scores(inputs.metric) for m, a in agents.items()}
    norms = None
    if inputs.normalisers is not None:
        try:
            norms = load_normalisers(inputs.normalisers)
        except (OSError, ValueError) as e:
            raise ReportInputError(inputs.normalisers, str(e).removeprefix(f"{inputs.normalisers}: ")) from None
    try:
        report = overall_report(scores, groups, norms)
    except ValueError as e:
        where = inputs.normalisers if inputs.normalisers is not None else next(iter(inputs.agent.values()))
        raise ReportInputError(where, f"cannot compute the overall score: {e}") from None
    return Headline(agents, envs, report, inputs.metric)


# ------------------------------------------------------------------------------------------------------------
# Formatting


def _signed(x: float, digits: int) -> str:
    x = round(x, digits) + 0.0  # no "-0.0"
    return f"{x:+.{digits}f}"


def fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def fmt_success(e: EnvResult) -> str:
    lo, hi = e.success_ci
    return f"{fmt_pct(e.success_rate)} [{100 * lo:.1f}, {100 * hi:.1f}]"


def fmt_reward(e: EnvResult) -> str:
    lo, hi = e.reward_ci
    return f"{e.mean_reward:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_delta(after: float, before: float, kind: str) -> str:
    """``+80.0 pp`` for rates, ``+0.800`` for rewards, ``+1.33`` for overall scores."""
    if kind == "pp":
        return _signed(100 * (after - before), 1) + " pp"
    return _signed(after - before, 3 if kind == "reward" else 2)


def _n(h: Headline, env_id: str) -> str:
    ns = [h.env(m, env_id).n for m in h.pair]
    return str(ns[0]) if len(set(ns)) == 1 else " / ".join(map(str, ns))


def headline_rows(h: Headline) -> tuple[list[str], list[list[str]], frozenset[int]]:
    """Header, rows and the indices of the overall rows of the headline table."""
    pair = h.pair
    two = len(pair) == 2
    header = ["group", "environment", "n"]
    for metric in ("success", "mean reward"):
        header += [f"{metric} · {m}" for m in pair] + ([f"Δ {metric}"] if two else [])
    rows: list[list[str]] = []
    summary: set[int] = set()
    width = len(pair) + (1 if two else 0)
    for group in GROUPS:
        ids = [t for t in h.envs if h.env(pair[0], t).group == group]
        if not ids:
            continue
        for t in ids:
            es = [h.env(m, t) for m in pair]
            row = [group, t, _n(h, t)] + [fmt_success(e) for e in es]
            row += [fmt_delta(es[-1].success_rate, es[0].success_rate, "pp")] if two else []
            row += [fmt_reward(e) for e in es]
            row += [fmt_delta(es[-1].mean_reward, es[0].mean_reward, "reward")] if two else []
            rows.append(row)
        scores = h.overall.scores
        if group in scores[pair[0]]:
            cells = [f"**{scores[m][group]:.2f}**" for m in pair]
            cells += [f"**{fmt_delta(scores[pair[-1]][group], scores[pair[0]][group], 'score')}**"] if two else []
        else:
            cells = ["-"] * width
        blank = [""] * width
        metric_cells = cells + blank if h.metric == "success_rate" else blank + cells
        summary.add(len(rows))
        rows.append([group, "**overall**", str(len(ids) - len(h.overall.skipped.get(group, [])))] + metric_cells)
    return header, rows, frozenset(summary)


def headline_caption(h: Headline) -> str:
    source = "fixed normalisers" if h.overall.fixed_normalisers else f"normalised over the models {', '.join(h.models)}"
    metric = "success rate" if h.metric == "success_rate" else "mean reward"
    parts = [(f"Success: rate [Wilson 95% CI, %]; mean reward [bootstrap 95% CI]. **overall**: the normalised "
              f"overall score of the {metric} (AgentTuning §3.1; {source}); its n counts the tasks averaged.")]
    for group, skipped in h.overall.skipped.items():
        parts.append(f"{group}: {', '.join(skipped)} skipped (every reference model scored 0).")
    ns = {t: {h.env(m, t).n for m in h.models} for t in h.envs}
    uneven = [t for t, n in ns.items() if len(n) > 1]
    if uneven:
        parts.append(f"Caution: the models were evaluated on different numbers of tasks on {', '.join(uneven)}.")
    return " ".join(parts)


def headline_block(h: Headline) -> Table:
    header, rows, summary = headline_rows(h)
    return Table(header, rows, align="ll" + "r" * (len(header) - 2), caption=headline_caption(h), emphasis=summary)


def headline_markdown(h: Headline) -> str:
    """The headline table in Markdown, its caption (intervals, normalisers, skipped tasks) below it."""
    from agenttuning.report.document import markdown_table

    block = headline_block(h)
    return markdown_table(block) + "\n\n" + block.caption + "\n"


def headline_table(inputs: ReportInputs) -> str:
    """The Markdown table of base vs tuned per environment, with the held-in / held-out overall rows and a caption
    (for a README)."""
    return headline_markdown(compute_headline(inputs))


def per_model_table(h: Headline) -> Table:
    """Every model on every environment, with the end reasons (an outage shows here, not as silent failures)."""
    rows = []
    for m in h.models:
        for t in h.envs:
            e = h.env(m, t)
            ended = ", ".join(f"{k} {v}" for k, v in sorted(e.end_reasons.items(), key=lambda kv: (-kv[1], kv[0])))
            rows.append([m, e.group, t, str(e.n), fmt_success(e), fmt_reward(e), ended])
    return Table(["model", "group", "environment", "n", "success [95% CI]", "mean reward [95% CI]", "ended"], rows,
                 align="lllrrrl")  # fmt: skip


def overall_table(h: Headline) -> Table:
    """Overall score per model and group, then the normaliser of each task."""
    groups = [g for g in GROUPS if g in h.overall.groups]
    header = ["model"] + [f"{g} overall" for g in groups]
    rows = [[m] + [f"{h.overall.scores[m][g]:.2f}" if g in h.overall.scores[m] else "-" for g in groups]
            for m in h.models]  # fmt: skip
    norms = ", ".join(f"`{t}` {v:.3f}" for t, v in h.overall.normalisers.items())
    source = "fixed (from the normalisers file)" if h.overall.fixed_normalisers else "the mean over these models"
    caption = f"Normalisers ({source}): {norms}."
    return Table(header, rows, caption=caption)
