"""``trajectories.html``: a static page to browse teacher and evaluation trajectories step by step.

No server, no external assets: the page's CSS and script are inlined and the trajectories are embedded as JSON in a
``<script type="application/json">`` element. Everything in a trajectory is *data* written by a model or an
environment, so:

* the JSON is made safe to embed by escaping ``<``, ``>``, ``&`` (and U+2028/U+2029) as ``\\uXXXX`` inside its
  strings (:func:`embed_json`): a trajectory containing ``</script>`` cannot close the element;
* the script puts every string on the page with ``textContent``, never ``innerHTML``.

The page stays small because only a sample is embedded: at most ``per_group`` trajectories per (source,
environment), chosen deterministically — each group is ordered by ``sha256(source, task id)`` and drawn round-robin
over its outcomes (success, then each failure's end reason) so failures are shown next to successes — and texts
longer than ``max_chars`` are clipped (the clip is marked). The page says how many are shown of how many.

    >>> embed_json({"a": "</script>"})
    '{"a":"\\\\u003c/script\\\\u003e"}'
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from agenttuning.eval.agent import context_hash
from agenttuning.schema import Trajectory

__all__ = ["ViewerSource", "embed_json", "sample", "viewer_html", "viewer_payload"]


@dataclass(frozen=True)
class ViewerSource:
    """One file of trajectories: a teacher rollout, or a model's evaluation on one environment."""

    name: str  # what the source filter shows: "teacher · db.jsonl", or the model's label
    kind: Literal["teacher", "eval"]
    file: str  # the path as given, for the page's header
    trajectories: Sequence[Trajectory]


def asset(name: str) -> str:
    return resources.files("agenttuning.report").joinpath("assets", name).read_text(encoding="utf-8")


def _order(source: str, t: Trajectory) -> str:
    return hashlib.sha256(f"{source}\0{t.task.id}".encode()).hexdigest()


def sample(source: str, trajs: Sequence[Trajectory], per_group: int) -> list[Trajectory]:
    """At most ``per_group`` of ``trajs`` per environment, balanced over outcomes, deterministic (module docstring)."""
    by_env: dict[str, dict[str, list[Trajectory]]] = {}
    for t in trajs:
        outcome = "success" if t.success else f"failure:{t.end_reason}"
        by_env.setdefault(t.task.env, {}).setdefault(outcome, []).append(t)
    picked: list[Trajectory] = []
    for env in sorted(by_env):
        buckets = [sorted(ts, key=lambda t: _order(source, t)) for _, ts in sorted(by_env[env].items())]
        chosen: list[Trajectory] = []
        while len(chosen) < per_group and any(buckets):
            for b in buckets:
                if b and len(chosen) < per_group:
                    chosen.append(b.pop(0))
        picked += sorted(chosen, key=lambda t: t.task.id)
    return picked


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit} more characters not shown]"


def viewer_payload(sources: Sequence[ViewerSource], *, per_group: int = 10, max_chars: int = 4000) -> dict[str, Any]:
    """The JSON the page embeds: ``trajectories`` (the sample), ``contexts`` (deduplicated prompts), counts."""
    records: list[dict[str, Any]] = []
    contexts: dict[str, list[dict[str, str]]] = {}
    counts = []
    for src in sources:
        chosen = sample(src.name, src.trajectories, per_group)
        counts.append({"source": src.name, "kind": src.kind, "file": src.file, "shown": len(chosen),
                       "total": len(src.trajectories)})  # fmt: skip
        for t in chosen:
            ctx = context_hash(t.context) if t.context else ""
            if ctx and ctx not in contexts:
                contexts[ctx] = [{"role": c.role, "content": _clip(c.content, max_chars)} for c in t.context]
            tokens = [t.usage.prompt_tokens, t.usage.completion_tokens] if t.usage.requests else None
            records.append({
                "i": len(records), "source": src.name, "kind": src.kind, "env": t.task.env, "id": t.task.id,
                "policy": t.policy, "success": t.success, "reward": t.reward, "end_reason": t.end_reason,
                "wall_time_s": t.wall_time_s, "tokens": tokens, "error": t.error, "ctx": ctx,
                "task": _clip(t.initial_observation, max_chars),
                "steps": [{"t": _clip(s.thought, max_chars), "a": _clip(s.action, max_chars),
                           "o": _clip(s.observation, max_chars), "r": s.reward, "term": s.terminated,
                           "trunc": s.truncated, "raw": _clip(s.raw, max_chars) if s.raw is not None else None,
                           "pe": s.parse_error} for s in t.steps],
            })  # fmt: skip
    return {"trajectories": records, "contexts": contexts, "sources": counts, "per_group": per_group}


_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` outside ``\\u`` escapes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return "".join(_UNSAFE.get(ch, ch) for ch in text)


def viewer_html(payload: dict[str, Any], *, title: str, report_link: str | None = "report.html") -> str:
    """The whole page."""
    shown = sum(c["shown"] for c in payload["sources"])
    total = sum(c["total"] for c in payload["sources"])
    per_source = "; ".join(f"{c['source']}: {c['shown']} of {c['total']}" for c in payload["sources"])
    summary = (f"Showing {shown} of {total} trajectories (at most {payload['per_group']} per source and environment, "
               f"chosen deterministically and balanced over outcomes). {per_source}.")  # fmt: skip
    back = f' · <a href="{html.escape(report_link)}">back to the report</a>' if report_link else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)} · trajectories</title>\n<style>\n{asset('viewer.css')}</style>\n</head>\n"
        f'<body data-total="{len(payload["trajectories"])}">\n'
        f'<header class="page"><h1>{html.escape(title)} · trajectories</h1>\n'
        f'<p id="summary">{html.escape(summary)}{back}</p>\n'
        "<p>Pick a trajectory, then step through Thought / Action / Observation with ◀ ▶ (or the arrow keys). "
        "The address keeps the selection: <code>#traj=3&amp;step=2</code>.</p></header>\n"
        '<div id="filters"><label>source<select id="f-source"></select></label>'
        '<label>environment<select id="f-env"></select></label>'
        '<label>outcome<select id="f-outcome"></select></label><span id="count"></span></div>\n'
        '<div class="layout"><ol id="list"></ol><section id="detail"></section></div>\n'
        f'<script type="application/json" id="trajectory-data">{embed_json(payload)}</script>\n'
        f"<script>\n{asset('viewer.js')}</script>\n</body>\n</html>\n"
    )
