"""The embedded default end to end, as the README's first command runs it (slow: about 20 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.report.chromium import body_attributes, dump_dom, find_chromium, screenshot
from tests.report.test_browser import assert_not_blank


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_embedded_default_in_20_minutes_and_its_report_opens_in_chromium(tmp_path: Path) -> None:
    out = tmp_path / "default"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agenttuning.cli", "pipeline", f"out={out}", "--no-progress"],
                          capture_output=True, text=True, timeout=1700)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    assert seconds < 20 * 60, f"the default took {seconds:.0f} s"
    assert "base vs tuned" in done.stdout

    report = out / "report"
    md = (report / "report.md").read_text()
    # honest numbers: the headline is the evaluation's own results, base and tuned
    run = json.loads((out / "run.json").read_text())
    for label, stage in (("base", "eval-base"), ("tuned", "eval-tuned")):
        results = json.loads((Path(run["stages"][stage]["dir"]) / "agent" / "results.json").read_text())
        for env in results["envs"]:
            assert f"| {env['env_id']} | {env['n']} |" in md
            assert f"{100 * env['success_rate']:.1f}% [" in md, (label, env["env_id"])
    assert "standard-library docstrings" in md  # the report says where the general text came from

    if find_chromium() is None:
        pytest.skip("no chromium binary (CI installs Debian's chromium)")
    png = screenshot(report / "report.html", tmp_path / "report.png")
    assert_not_blank(png)
    attrs = body_attributes(dump_dom(report / "report.html"))
    assert attrs["data-plots-loaded"] == attrs["data-plots-total"] and int(attrs["data-plots-total"]) >= 4
