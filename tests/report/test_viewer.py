"""trajectories.html: safe embedding of model output, a capped deterministic sample, honest counts."""

from __future__ import annotations

import json
import random
import re

from agenttuning.jsonl import read_records
from agenttuning.report.viewer import (
    ViewerSource,
    embed_json,
    sample,
    viewer_html,
    viewer_payload,
)
from agenttuning.schema import Step, Trajectory

HOSTILE_THOUGHT = '</script><script>document.body.dataset.pwned = "1"</script> <!-- & \u2028'
HOSTILE_OBS = '<img src=x onerror="document.body.dataset.pwned = 2"><b>bold?</b>'


def hostile(traj: Trajectory) -> Trajectory:
    """A real trajectory whose model output and observation try to break out of the page."""
    steps = [Step(thought=HOSTILE_THOUGHT, action="</script>", observation=HOSTILE_OBS)] + list(traj.steps)
    return traj.model_copy(update={"steps": steps})


def embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="trajectory-data">(.*?)</script>', page, re.DOTALL)
    assert m is not None
    return json.loads(m.group(1))


def test_model_output_cannot_break_out_of_the_script(files):
    traj = hostile(read_records(files.inputs.teacher_trajectories[0], Trajectory)[0])
    payload = viewer_payload([ViewerSource("teacher", "teacher", "t.jsonl", [traj])])
    page = viewer_html(payload, title="<title> & co")
    assert page.count("</script>") == 2  # the data element's and the viewer script's own closers, nothing else
    assert "<script>document.body" not in page and "<img src=x" not in page and "<!--" not in page
    assert embedded(page) == payload  # escaping loses nothing: the JSON parses back to the same data
    assert embedded(page)["trajectories"][0]["steps"][0]["t"] == HOSTILE_THOUGHT
    assert "<title>&lt;title&gt; &amp; co · trajectories</title>" in page
    assert ".innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    assert embed_json({"a": "<>&\u2028"}) == '{"a":"\\u003c\\u003e\\u0026\\u2028"}'


def test_the_sample_is_capped_balanced_and_deterministic(files):
    trajs = read_records(files.inputs.agent["base"] / "db-v1.jsonl", Trajectory)  # noisy:0.5: both outcomes
    assert len(trajs) == 5 and 0 < sum(t.success for t in trajs) < 5
    picked = sample("base", trajs, 2)
    assert len(picked) == 2 and {t.success for t in picked} == {True, False}  # a success next to a failure
    shuffled = trajs[:]
    random.Random(1).shuffle(shuffled)
    assert [t.task.id for t in sample("base", shuffled, 2)] == [t.task.id for t in picked]
    assert len(sample("base", trajs, 10)) == 5
    assert [t.task.id for t in sample("base", trajs, 10)] == sorted(t.task.id for t in trajs)


def test_long_texts_are_clipped_and_marked(files):
    traj = read_records(files.inputs.teacher_trajectories[0], Trajectory)[0]
    payload = viewer_payload([ViewerSource("t", "teacher", "t.jsonl", [traj])], max_chars=50)
    task = payload["trajectories"][0]["task"]
    assert task.startswith(traj.initial_observation[:50])
    assert task.endswith(f"[{len(traj.initial_observation) - 50} more characters not shown]")
    context = next(iter(payload["contexts"].values()))
    assert len(context) == len(traj.context) and len(context[0]["content"]) < 120


def test_the_page_says_how_many_of_how_many(built, files):
    page = built.viewer.read_text()
    data = embedded(page)
    shown, total = len(data["trajectories"]), sum(s["total"] for s in data["sources"])
    n_teacher = sum(len(read_records(p, Trajectory)) for p in files.inputs.teacher_trajectories)
    n_eval = sum(len(read_records(f, Trajectory)) for p in files.inputs.agent.values() for f in p.glob("*.jsonl"))
    assert total == n_teacher + n_eval
    assert shown < total  # the cap bit: 4 per (source, environment)
    counts = {}
    for t in data["trajectories"]:
        counts[(t["source"], t["env"])] = counts.get((t["source"], t["env"]), 0) + 1
    assert max(counts.values()) == 4
    assert f"Showing {shown} of {total} trajectories (at most 4 per source and environment" in page
    assert [s["source"] for s in data["sources"]] == ["teacher · db.jsonl", "teacher · lookup.jsonl",
                                                      "teacher · db-extra.jsonl", "base", "tuned"]  # fmt: skip
    assert data["trajectories"][0]["i"] == 0 and [t["i"] for t in data["trajectories"]] == list(range(shown))
