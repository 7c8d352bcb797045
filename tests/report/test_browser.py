"""The pages in a real browser (headless Chromium): they render, the plots decode, the viewer lists and steps."""

from __future__ import annotations

import html
import re
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageStat

from agenttuning.jsonl import read_records
from agenttuning.report.viewer import ViewerSource, viewer_html, viewer_payload
from agenttuning.schema import Trajectory
from tests.report.chromium import body_attributes, dump_dom, screenshot
from tests.report.test_viewer import HOSTILE_OBS, HOSTILE_THOUGHT, embedded, hostile


def assert_not_blank(png):
    with Image.open(png) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 1600)
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "a page of a few flat colours"
        assert max(ImageStat.Stat(rgb).stddev) > 10, "no pixel variance: a blank page"


def detail(dom: str) -> str:
    m = re.search(r'<section id="detail">(.*?)</section></div>', dom, re.DOTALL)
    assert m is not None
    return m.group(1)


def in_parallel(*calls):
    """Run independent Chromium invocations at once (each has its own profile); their results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def test_report_html_renders_with_every_plot_decoded(chromium, built, tmp_path):
    png, dom = in_parallel(lambda: screenshot(built.html, tmp_path / "report.png"), lambda: dump_dom(built.html))
    assert_not_blank(png)
    attrs = body_attributes(dom)
    assert attrs["data-plots-total"] == str(len(built.plots)) == "6"
    assert attrs["data-plots-loaded"] == "6"  # every <img> has naturalWidth > 0: the data URIs decoded


def test_viewer_lists_filters_and_steps(chromium, built, tmp_path):
    data = embedded(built.viewer.read_text())
    trajs = data["trajectories"]
    k = next(t["i"] for t in trajs if len(t["steps"]) >= 2 and t["steps"][0]["a"] != t["steps"][1]["a"])
    png, filtered, dom, dom_all = in_parallel(
        lambda: screenshot(built.viewer, tmp_path / "viewer.png"),
        lambda: dump_dom(built.viewer, url_suffix="#env=lookup-v1&outcome=failure"),
        lambda: dump_dom(built.viewer, url_suffix=f"#traj={k}&step=2"),
        lambda: dump_dom(built.viewer, url_suffix=f"#traj={k}&step=all"),
    )
    assert_not_blank(png)

    want = sum(t["env"] == "lookup-v1" and not t["success"] for t in trajs)
    assert 0 < want < len(trajs) and body_attributes(filtered)["data-listed"] == str(want)

    attrs = body_attributes(dom)
    assert attrs["data-ready"] == "1" and attrs["data-listed"] == str(len(trajs)) == attrs["data-total"]  # no filter
    assert (attrs["data-selected"], attrs["data-step"]) == (str(k), "2")
    shown = detail(dom)
    steps = trajs[k]["steps"]
    assert f"Step 2 of {len(steps)}" in shown and html.escape(steps[1]["a"], quote=False) in shown
    assert "Step 1 of" not in shown and html.escape(steps[0]["a"], quote=False) not in shown
    assert html.escape(trajs[k]["id"]) in shown

    shown = detail(dom_all)
    assert shown.count('class="step"') == len(steps) and f"Step {len(steps)} of {len(steps)}" in shown


def test_hostile_trajectory_is_shown_as_text(chromium, files, tmp_path):
    traj = hostile(read_records(files.inputs.teacher_trajectories[0], Trajectory)[0])
    page = tmp_path / "trajectories.html"
    page.write_text(viewer_html(viewer_payload([ViewerSource("t", "teacher", "t.jsonl", [traj])]), title="x"))
    dom = dump_dom(page, url_suffix="#traj=0&step=all")
    attrs = body_attributes(dom)
    assert "data-pwned" not in attrs and attrs["data-ready"] == "1"  # nothing of the trajectory ran
    shown = detail(dom)
    assert html.escape(HOSTILE_THOUGHT.split("<!--")[0], quote=False) in shown  # visible, as text
    assert html.escape(HOSTILE_OBS, quote=False) in shown and "<img" not in shown
