"""Build the report: read the stage files named by :class:`ReportInputs`, write Markdown, HTML, plots and a viewer.

The story is linear: load and check every input (a malformed file stops here, named, before anything is
written), draw the plots, assemble one list of blocks, render it to ``report.md`` and ``report.html``, write
``trajectories.html``, and write ``report.json`` last (the report is complete once it exists). Output is
deterministic: the same inputs give byte-identical files (nothing reads the clock).

Example::

    paths = build_report(ReportInputs("AgentTuning on db", agent={"base": Path("eval/base"),
                                                                  "tuned": Path("eval/tuned")}), Path("report"))
    print(paths.headline)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agenttuning.data.construction import ConstructionTable
from agenttuning.jsonl import write_text_atomic
from agenttuning.report import plots
from agenttuning.report.document import (
    Block,
    Code,
    Figure,
    Heading,
    Para,
    to_html,
    to_markdown,
)
from agenttuning.report.headline import (
    FORMULA,
    Headline,
    compute_headline,
    headline_block,
    headline_markdown,
    load_agents,
    overall_table,
    per_model_table,
)
from agenttuning.report.inputs import (
    ReportInputs,
    TrainCurves,
    load_construction,
    load_data_stats,
    load_general,
    load_mix,
    load_train_metrics,
    load_trajectories,
)
from agenttuning.report.tables import (
    Sweep,
    behaviour_table,
    compute_sweep,
    agentinstruct_table,
    data_table,
    decontam_line,
    general_table,
    mix_table,
    provenance_table,
    settings_line,
    sweep_table,
    teacher_table,
    training_table,
)
from agenttuning.report.viewer import ViewerSource, asset, viewer_html, viewer_payload

__all__ = ["PLOTS", "ReportPaths", "build_report"]

PLOTS = ("env_scores", "overall", "general", "sweep", "data", "training")  # every plot a report may hold
SWEEP_HOWTO = ("Not run. Run `agenttuning sweep CONFIG.yaml` (a model tuned per eta, on filtered and unfiltered "
               "data, each evaluated), then pass its points as `sweep` (`SweepPoint(label, eta, filtered, agent, "
               "general)`).")  # fmt: skip
PLOTS_LOADED_JS = """window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot"), ok = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) ok += 1; });
  document.body.dataset.plotsLoaded = String(ok);
  document.body.dataset.plotsTotal = String(imgs.length);
});
"""


@dataclass(frozen=True)
class ReportPaths:
    """What :func:`build_report` wrote, and the headline Markdown table (for a README)."""

    out_dir: Path
    markdown: Path
    html: Path
    viewer: Path
    summary: Path  # report.json, written last
    plots: dict[str, Path] = field(default_factory=dict)
    headline: str = ""


@dataclass(frozen=True)
class _Loaded:
    headline: Headline
    general: dict[str, dict[str, float]]
    stats: dict[str, Any] | None
    construction: ConstructionTable | None
    mix: dict[str, Any] | None
    curves: TrainCurves | None
    teachers: dict[str, list[Any]]
    sweep: Sweep | None
    viewer: list[ViewerSource]
    missing_trajectories: list[str]
    behaviour: dict[str, dict[str, list[Any]]]


def _load(inputs: ReportInputs) -> _Loaded:
    headline = compute_headline(inputs, load_agents(inputs.agent))
    general = {m: load_general(p) for m, p in inputs.general.items()}
    teachers = {str(p): load_trajectories(p) for p in inputs.teacher_trajectories}
    viewer = [ViewerSource(f"teacher · {Path(p).name}", "teacher", p, ts) for p, ts in teachers.items()]
    missing = []
    behaviour: dict[str, dict[str, list[Any]]] = {}
    for m, a in headline.agents.items():
        trajs = []
        for e in a.result.envs:
            path = a.results_dir / e.trajectories
            if path.is_file():
                loaded = load_trajectories(path)
                behaviour.setdefault(m, {})[e.env_id] = loaded
                trajs += loaded
            else:
                missing.append(str(path))
        viewer.append(ViewerSource(m, "eval", str(a.path), trajs))
    return _Loaded(
        headline=headline,
        general=general,
        stats=load_data_stats(inputs.data_stats) if inputs.data_stats is not None else None,
        construction=load_construction(inputs.construction) if inputs.construction is not None else None,
        mix=load_mix(inputs.mix) if inputs.mix is not None else None,
        curves=load_train_metrics(inputs.train_metrics) if inputs.train_metrics is not None else None,
        teachers=teachers,
        sweep=compute_sweep(inputs, headline) if inputs.sweep else None,
        viewer=viewer,
        missing_trajectories=missing,
        behaviour=behaviour,
    )


def _not_run(text: str) -> Para:
    return Para(text, cls="not-run")


def _write(path: Path, text: str) -> None:
    write_text_atomic(path, text)
    path.chmod(0o644)  # a report is for reading: not the temporary file's 0600


def _blocks(inputs: ReportInputs, d: _Loaded) -> list[Block]:
    h = d.headline
    base, tuned = h.pair[0], h.pair[-1]
    pol = {m: h.agents[m].result.policy for m in h.pair}
    who = (f"Before tuning: **{base}** (`{pol[base]}`); after: **{tuned}** (`{pol[tuned]}`)." if len(h.pair) == 2
           else f"Model: **{base}** (`{pol[base]}`).")  # fmt: skip
    b: list[Block] = [
        Heading(1, inputs.title),
        Para(f"AgentTuning (Zeng et al. 2023, arXiv 2310.12823): agent tasks held-in and held-out, general "
             f"abilities, the data and the training behind them. {who} "
             f"Browse the trajectories: [trajectories.html](trajectories.html)."),
        Heading(2, "Headline: agent tasks before and after tuning", "headline"),
        headline_block(h),
        Para("The overall score per group is AgentBench's normalisation as AgentTuning §3.1 uses it "
             "(`agenttuning.eval.score`), with s[m][t] the score of model m on task t:"),
        Code(FORMULA.replace(";  ", "\n")),
    ]
    b.append(Figure("plots/env_scores.png", "per-environment scores", "Per environment, with the 95% intervals "
                    "of the results."))
    b.append(Figure("plots/overall.png", "overall scores", "Normalised overall score per group; the dotted line "
                    "is 1, the models' mean when normalised over them."))
    b += [Heading(3, "Every model"), overall_table(h), per_model_table(h)]
    if d.behaviour:
        b += [Heading(3, "Behaviour"),
              Para("From the evaluation trajectories: the share of replies with a parsable Thought/Action, the share of "
                   "episodes the agent ended itself (an answer, not a turn budget), and the mean steps. A model can "
                   "learn the format before it learns the task: this is where that shows."),
              behaviour_table(d.behaviour)]  # fmt: skip
    if inputs.notes:
        b.append(Heading(2, "Notes", "notes"))
        b += [Para(n, cls="note") for n in inputs.notes]

    b.append(Heading(2, "General abilities", "general"))
    if d.general:
        b += [Para("Offline check on held-out general chat (`agenttuning.eval.general`): loss and perplexity over "
                   "the trained tokens, exact match of the greedy reply's first line."),
              general_table(d.general), Figure("plots/general.png", "general abilities")]  # fmt: skip
    else:
        b.append(_not_run("Not run: no general-eval results given (`evaluate_general`, `GeneralEvalResult.to_dict()`)."))

    b.append(Heading(2, "Mixture ratio (eta) sweep", "sweep"))
    if d.sweep is not None:
        source = "fixed normalisers" if d.sweep.fixed else "normalised over the sweep points and the report's models"
        b += [Para(f"Each point is a model tuned with agent share eta, evaluated like the headline ({source})."),
              sweep_table(d.sweep), Figure("plots/sweep.png", "eta sweep", "Filtered (solid) and unfiltered "
              "(dashed) agent data; the dotted line, when drawn, is the model before tuning.")]  # fmt: skip
    else:
        b.append(_not_run(SWEEP_HOWTO))

    b.append(Heading(2, "Data", "data"))
    if not (d.teachers or d.stats or d.mix or d.construction):
        b.append(_not_run("Not run: no teacher trajectories, filter stats.json or mix metrics.json given."))
    if d.construction is not None:
        b += [Heading(3, "AgentInstruct construction (Table 1 of the paper)"),
              Para("Per environment and where its tasks came from (derived from existing data, or written by a teacher "
                   "and verified: self-instruct): instructions, tasks that verified, the teacher's trajectories, those "
                   "the reward filter kept, their mean agent turns, and the keep ratio. The paper kept 1,866 of "
                   "35,341 trajectories (5.3%)."),
              agentinstruct_table(d.construction)]  # fmt: skip
    if d.teachers:
        b += [Heading(3, "Teacher rollouts"), teacher_table(d.teachers)]
    if d.stats is not None:
        b += [Heading(3, "Filtering and decontamination (§2.1)"), data_table(d.stats)]
        b += [Para(line) for line in (decontam_line(d.stats), settings_line(d.stats)) if line]
        b.append(Figure("plots/data.png", "data filtering"))
    if d.mix is not None:
        b += [Heading(3, "Mixture (§2.2)"), mix_table(d.mix)]

    b.append(Heading(2, "Training", "training"))
    if d.curves is not None:
        b += [training_table(d.curves), Figure("plots/training.png", "training curves")]
    else:
        b.append(_not_run("Not run: no training metrics.jsonl given."))

    b.append(Heading(2, "Trajectories", "trajectories"))
    b.append(Para("[trajectories.html](trajectories.html): teacher and evaluation trajectories, filterable by source, "
                  "environment and outcome, step by step (a sample; the page says how many of how many)."))
    if d.missing_trajectories:
        b.append(Para("Trajectory files named by the results but not found: "
                      + ", ".join(f"`{p}`" for p in d.missing_trajectories) + "."))  # fmt: skip
    b += [Heading(2, "Provenance", "provenance"), provenance_table(inputs, h)]
    b.append(Para("How every number is computed: `docs/report.md`.", cls="muted"))
    return b


def build_report(inputs: ReportInputs, out_dir: str | Path) -> ReportPaths:
    """Write ``report.md``, ``report.html``, ``trajectories.html``, ``plots/*.png`` and ``report.json`` to ``out_dir``.

    The viewer embeds at most ``inputs.viewer_per_env`` trajectories per (source, environment), each text clipped
    at ``inputs.viewer_max_chars``.
    """
    d = _load(inputs)
    out = Path(out_dir)
    (out / "report.json").unlink(missing_ok=True)
    figures: dict[str, Path] = {}
    pdir = out / "plots"
    figures["env_scores"] = plots.plot_env_scores(d.headline, pdir / "env_scores.png")
    figures["overall"] = plots.plot_overall(d.headline, pdir / "overall.png")
    if d.general:
        figures["general"] = plots.plot_general(d.general, pdir / "general.png")
    if d.sweep is not None:
        figures["sweep"] = plots.plot_sweep(d.sweep, pdir / "sweep.png",
                                            base=inputs.base if len(inputs.agent) > 1 else None)
    if d.stats is not None:
        figures["data"] = plots.plot_data(d.stats, pdir / "data.png")
    if d.curves is not None:
        figures["training"] = plots.plot_training(d.curves, pdir / "training.png")
    for name in PLOTS:  # a plot of an earlier build whose input is gone now would mislead
        if name not in figures:
            (pdir / f"{name}.png").unlink(missing_ok=True)

    blocks = _blocks(inputs, d)
    md, page, viewer = out / "report.md", out / "report.html", out / "trajectories.html"
    _write(md, to_markdown(blocks))
    _write(page, to_html(blocks, title=inputs.title, css=asset("report.css"), script=PLOTS_LOADED_JS, base_dir=out))
    payload = viewer_payload(d.viewer, per_group=inputs.viewer_per_env, max_chars=inputs.viewer_max_chars)
    _write(viewer, viewer_html(payload, title=inputs.title))
    headline = headline_markdown(d.headline)
    summary = out / "report.json"
    _write(summary, json.dumps({
        "title": inputs.title, "models": d.headline.models, "metric": inputs.metric,
        "overall": d.headline.overall.to_dict(),
        "envs": {m: [e.model_dump() for e in a.result.envs] for m, a in d.headline.agents.items()},
        "general": d.general,
        "sweep": [{"label": r.point.label, "eta": r.point.eta, "filtered": r.point.filtered, "overall": r.overall,
                   "general": r.general} for r in d.sweep.rows] if d.sweep else [],
        "trajectories": payload["sources"],
        "files": {"markdown": md.name, "html": page.name, "viewer": viewer.name,
                  "plots": {k: f"plots/{v.name}" for k, v in figures.items()}},
    }, ensure_ascii=False, indent=2) + "\n")  # fmt: skip
    return ReportPaths(out, md, page, viewer, summary, figures, headline)
