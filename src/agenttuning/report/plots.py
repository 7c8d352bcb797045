"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change).

Reruns on the same inputs give byte-identical PNGs: fixed figure sizes and DPI, a fixed style (``rc_context``,
so a user's matplotlibrc changes nothing), and no metadata in the file (matplotlib writes no timestamp into PNGs;
its ``Software`` entry, the only one, is dropped too, so a matplotlib upgrade alone does not change the bytes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agenttuning.report.headline import GROUPS, Headline
from agenttuning.report.inputs import TrainCurves
from agenttuning.report.tables import Sweep

__all__ = ["plot_data", "plot_env_scores", "plot_general", "plot_overall", "plot_sweep", "plot_training"]

DPI = 100
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.grid.axis": "y",
    "grid.color": "#e3e3e3", "grid.linewidth": 0.8, "axes.axisbelow": True, "legend.frameon": False,
    "figure.facecolor": "white", "savefig.facecolor": "white", "hatch.color": "#555555",
}  # fmt: skip
BASE, TUNED = "#9aa0a6", "#1f6fb4"
MIDDLE = ("#e8a33d", "#5a9e3a", "#a05fb4", "#d1495b", "#2a9d8f", "#8d6e63")
REASON_COLOURS = ("#d1495b", "#e8a33d", "#a05fb4", "#8d6e63", "#2a9d8f", "#6c757d")


def model_colours(models: Sequence[str]) -> dict[str, str]:
    """Base grey, tuned blue, anything in between from a fixed palette."""
    out = {}
    for i, m in enumerate(models):
        out[m] = BASE if i == 0 and len(models) > 1 else TUNED if i == len(models) - 1 else MIDDLE[(i - 1) % 6]
    return out


def _draw(path: Path, size: tuple[float, float], ncols: int, draw: Callable[[list[Any]], None], *,
          widths: Sequence[float] | None = None) -> Path:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("the report's plots need matplotlib: pip install 'agenttuning[report]'") from e

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(1, ncols, squeeze=False, width_ratios=widths)[0])
        draw(axes)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _bars(ax: Any, labels: Sequence[str], series: Mapping[str, Sequence[float]], colours: Mapping[str, str], *,
          errors: Mapping[str, Sequence[tuple[float, float]]] | None = None, fmt: str = "{:.2f}") -> None:
    """Grouped bars: one group per label, one bar per series, value printed on each bar, optional CI whiskers."""
    k = max(1, len(series))
    width = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(labels))]
        ax.bar(xs, values, width * 0.92, label=name, color=colours[name])
        if errors is not None:
            lo = [max(0.0, v - ci[0]) if math.isfinite(ci[0]) else 0.0 for v, ci in zip(values, errors[name])]
            hi = [max(0.0, ci[1] - v) if math.isfinite(ci[1]) else 0.0 for v, ci in zip(values, errors[name])]
            ax.errorbar(xs, values, yerr=[lo, hi], fmt="none", ecolor="#333333", elinewidth=1, capsize=3)
        for x, v in zip(xs, values):
            ax.annotate(fmt.format(v), (x, v), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, color="#333333")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)


def plot_env_scores(h: Headline, path: Path) -> Path:
    """Success rate and mean reward per environment and model, with the 95% intervals of the results."""
    colours = model_colours(h.models)
    labels = [f"{t}\n({h.env(h.models[0], t).group})" for t in h.envs]

    def draw(axes: list[Any]) -> None:
        for ax, key, ci, title, fmt in ((axes[0], "success_rate", "success_ci", "success rate (Wilson 95% CI)",
                                         "{:.0%}"),
                                        (axes[1], "mean_reward", "reward_ci", "mean reward (bootstrap 95% CI)",
                                         "{:.2f}")):  # fmt: skip
            series = {m: [getattr(h.env(m, t), key) for t in h.envs] for m in h.models}
            errors = {m: [getattr(h.env(m, t), ci) for t in h.envs] for m in h.models}
            _bars(ax, labels, series, colours, errors=errors, fmt=fmt)
            ax.set_title(title)
            ax.set_ylim(0, 1.12)
        axes[0].yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    return _draw(path, (11, 4.2), 2, draw)


def plot_overall(h: Headline, path: Path) -> Path:
    """The normalised overall score per group (held-in, held-out) and model."""
    colours = model_colours(h.models)
    groups = [g for g in GROUPS if g in h.overall.groups]

    def draw(axes: list[Any]) -> None:
        ax = axes[0]
        series = {m: [h.overall.scores[m].get(g, 0.0) for g in groups] for m in h.models}
        _bars(ax, groups, series, colours)
        ax.axhline(1.0, color="#777777", linestyle=":", linewidth=1)
        ax.set_title("overall score (normalised, §3.1)")
        top = max([v for vs in series.values() for v in vs] + [1.0])
        ax.set_ylim(0, top * 1.15)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    return _draw(path, (6.5, 3.8), 1, draw)


def plot_general(general: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Loss, perplexity and exact match of the general-ability check, per model."""
    models = list(general)
    colours = model_colours(models)

    def draw(axes: list[Any]) -> None:
        for ax, key, title, fmt in ((axes[0], "loss", "loss (lower is better)", "{:.3f}"),
                                    (axes[1], "perplexity", "perplexity (lower is better)", "{:.2f}"),
                                    (axes[2], "exact_match", "exact match (higher is better)", "{:.0%}")):  # fmt: skip
            for i, m in enumerate(models):
                v = general[m][key]
                ax.bar([i], [v], 0.7, color=colours[m], label=m)
                ax.annotate(fmt.format(v), (i, v), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)  # fmt: skip
            ax.set_xticks(range(len(models)), models)
            ax.set_title(title)
            top = max([general[m][key] for m in models] + [1e-9])
            ax.set_ylim(0, 1.12 if key == "exact_match" else top * 1.18)
        axes[2].yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")

    return _draw(path, (11, 3.6), 3, draw)


def plot_sweep(sweep: Sweep, path: Path, *, base: str | None = None) -> Path:
    """Held-in, held-out overall (and general loss, when given) against eta; filtered and unfiltered data as
    separate series; ``base`` (the model before tuning) as a dotted reference line."""
    panels = [("held-in", "held-in overall"), ("held-out", "held-out overall")]
    if any(r.general for r in sweep.rows):
        panels.append(("general", "general loss (lower is better)"))

    def draw(axes: list[Any]) -> None:
        for ax, (key, title) in zip(axes, panels):
            drawn = False
            for filtered, style, marker, colour in ((True, "-", "o", TUNED), (False, "--", "s", "#d1495b")):
                pts = []
                for r in sweep.rows:
                    if r.point.filtered != filtered:
                        continue
                    y = (r.general or {}).get("loss") if key == "general" else r.overall.get(key)
                    if y is not None:
                        pts.append((r.point.eta, y))
                if pts:
                    drawn = True
                    xs, ys = zip(*sorted(pts))
                    ax.plot(xs, ys, linestyle=style, marker=marker, color=colour,
                            label="filtered data" if filtered else "unfiltered data")  # fmt: skip
            if not drawn:
                # an empty panel would read as a broken plot: say why it is empty (the overall score skips tasks
                # on which every model scored 0, so a group can have no score at all)
                ax.text(0.5, 0.5, "no score: every model scored 0\non every task of this group",
                        ha="center", va="center", transform=ax.transAxes, color="#666666", fontsize=9)  # fmt: skip
            if base is not None:
                ref = sweep.base_general_loss if key == "general" else sweep.models.get(base, {}).get(key)
                if ref is not None:
                    ax.axhline(ref, color=BASE, linestyle=":", linewidth=1.2, label=f"{base} (before tuning)")
            ax.set_title(title)
            ax.set_xticks(sorted({r.point.eta for r in sweep.rows}))
            ax.set_xlabel("eta (share of agent data)")
            ax.grid(True, axis="x", color="#f0f0f0")
        axes[0].legend(loc="best", fontsize=8)

    return _draw(path, (11 if len(panels) == 3 else 8, 3.6), len(panels), draw)


def plot_data(stats: Mapping[str, Any], path: Path) -> Path:
    """Filtering per environment (kept, and drops by reason, stacked to the total), and the decontamination step."""
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in stats["envs"] if r["env"] != "all"] or list(stats["envs"])
    reasons = sorted({k for r in rows for k in r.get("dropped", {})})
    decontam = stats.get("decontam")

    def draw(axes: list[Any]) -> None:
        ax = axes[0]
        ys = list(range(len(rows)))[::-1]
        left = [0.0] * len(rows)
        kept = [float(r["kept"]) for r in rows]
        ax.barh(ys, kept, color="#5a9e3a", label="kept")
        left = kept[:]
        for i, reason in enumerate(reasons):
            vals = [float(r.get("dropped", {}).get(reason, 0)) for r in rows]
            ax.barh(ys, vals, left=left, color=REASON_COLOURS[i % len(REASON_COLOURS)], label=f"dropped: {reason}")
            left = [a + b for a, b in zip(left, vals)]
        for y, r in zip(ys, rows):
            ax.annotate(f"{int(r['kept'])} / {int(r['total'])}", (float(r["total"]), y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(ys, [r["env"] for r in rows])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("trajectory filtering (kept / total)")
        ax.set_xlim(0, max(float(r["total"]) for r in rows) * 1.2 or 1)
        ax.grid(True, axis="x", color="#e3e3e3")
        ax.grid(False, axis="y")
        ax.legend(loc="lower right", fontsize=7)
        if decontam is not None:
            ax2 = axes[1]
            dropped = decontam.get("dropped") or {}
            final = float(decontam["kept"])
            ax2.bar([0], [final], 0.5, color="#5a9e3a", label="kept for training")
            bottom = final
            for i, (reason, v) in enumerate(sorted(dropped.items())):
                ax2.bar([0], [v], 0.5, bottom=bottom, color=REASON_COLOURS[(i + 2) % len(REASON_COLOURS)],
                        label=f"dropped: {reason}")  # fmt: skip
                bottom += v
            ax2.annotate(f"{int(final)} / {int(bottom)}", (0, bottom), xytext=(0, 2), textcoords="offset points",
                         ha="center", va="bottom", fontsize=8)  # fmt: skip
            ax2.set_xticks([0], ["kept by the filter"])
            ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax2.set_xlim(-0.6, 0.6)
            ax2.set_ylim(0, max(bottom, 1) * 1.15)
            ax2.set_title("decontamination + dedup")
            ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)

    height = 2.4 + 0.5 * len(rows)
    if decontam is None:
        return _draw(path, (8, height), 1, draw)
    return _draw(path, (11, height), 2, draw, widths=(3, 1))


def plot_training(curves: TrainCurves, path: Path) -> Path:
    """Train loss against step (and per source, when logged), and the held-out agent / general losses."""
    has_eval = bool(curves.eval)

    def draw(axes: list[Any]) -> None:
        ax = axes[0]
        for key, colour, width, label in (("loss", "#333333", 1.4, "train loss"),
                                          ("agent_loss", TUNED, 0.8, "agent batches"),
                                          ("general_loss", "#e8a33d", 0.8, "general batches")):  # fmt: skip
            xs, ys = curves.series(key)
            if xs:
                ax.plot(xs, ys, color=colour, linewidth=width, label=label, alpha=1.0 if key == "loss" else 0.7)
        ax.set_title("training loss")
        ax.set_xlabel("step")
        ax.legend(loc="upper right", fontsize=8)
        if has_eval:
            ax2 = axes[1]
            for key, colour, label in (("eval_agent_loss", TUNED, "held-out agent"),
                                       ("eval_general_loss", "#e8a33d", "held-out general")):  # fmt: skip
                xs, ys = curves.series(key, source="eval")
                if xs:
                    ax2.plot(xs, ys, color=colour, marker="o", markersize=4, label=label)
            ax2.set_title("eval loss (held-out)")
            ax2.set_xlabel("step")
            ax2.legend(loc="best", fontsize=8)

    return _draw(path, (11, 3.6) if has_eval else (6.5, 3.6), 2 if has_eval else 1, draw)
