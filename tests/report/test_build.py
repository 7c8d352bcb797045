"""build_report: the files, the sections present or said to be not run, determinism, and clear input errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
import yaml

from agenttuning.jsonl import RecordError
from agenttuning.report import (
    ReportInputError,
    ReportInputs,
    build_report,
    headline_table,
    load_report_inputs,
)
from agenttuning.report.build import PLOTS

ALL_SECTIONS = ("## Headline", "## Notes", "## General abilities", "## Mixture ratio (eta) sweep", "## Data",
                "### AgentInstruct construction (Table 1 of the paper)", "### Teacher rollouts", "### Filtering and decontamination", "### Mixture", "## Training",
                "## Trajectories", "## Provenance")  # fmt: skip


def test_full_report(built, files):
    md = built.markdown.read_text()
    for section in ALL_SECTIONS:
        assert f"\n{section}" in md, section
    assert "Not run" not in md
    assert sorted(built.plots) == sorted(PLOTS)
    for name in PLOTS:  # every plot referenced relatively, written, a real PNG
        assert f"](plots/{name}.png)" in md
        assert (built.out_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert built.headline in md and "[trajectories.html](trajectories.html)" in md
    # facts from the inputs: the decontamination drops, the filter's counts, the notes, the provenance
    stats = json.loads(files.inputs.data_stats.read_text())
    total = next(r for r in stats["envs"] if r["env"] == "all")
    assert f"| all | {total['total']} | {total['kept']} |" in md
    # the construction table: each source apart, the totals agree with the filter's
    construction = json.loads(files.inputs.construction.read_text())["rows"]
    si = next(r for r in construction if r["source"] == "self-instruct")
    assert (si["env"], si["instructions"], si["verified"]) == ("db-v1", 10, 2)
    assert f"| db-v1 | self-instruct | 10 | 2 | {si['trajectories']} | {si['kept']} |" in md
    everything = construction[-1]
    assert (everything["trajectories"], everything["kept"]) == (total["total"], total["kept"])
    assert f"leaving **{stats['decontam']['kept']}** for training" in md and "test_id 2" in md
    assert "> Scripted policies stand in for models" in md
    assert "| general data | 12 arithmetic chats written by the test |" in md
    assert "| eta=0.2 unfiltered | 0.2 | unfiltered |" in md

    page = built.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)  # one self-contained file
    assert 'src="plots/' not in page  # no image read from disk
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external asset
    assert "<h1>AgentTuning report &lt;test&gt;</h1>" in page  # text is escaped
    summary = json.loads(built.summary.read_text())
    assert summary["models"] == ["base", "tuned"] and set(summary["files"]["plots"]) == set(PLOTS)


def test_missing_inputs_leave_sections_out(files, tmp_path):
    paths = build_report(files.minimal, tmp_path)
    md = paths.markdown.read_text()
    assert "## Notes" not in md and "### Teacher rollouts" not in md and "### Mixture" not in md
    assert "## General abilities\n\nNot run" in md
    assert "## Mixture ratio (eta) sweep\n\nNot run. Run `agenttuning sweep CONFIG.yaml`" in md
    assert "## Data\n\nNot run" in md and "## Training\n\nNot run" in md
    assert sorted(paths.plots) == ["env_scores", "overall"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["env_scores.png", "overall.png"]
    assert paths.html.read_text().count('src="data:image/png;base64,') == 2
    assert paths.headline == headline_table(files.minimal)


def test_a_rebuild_removes_plots_whose_input_is_gone(built, files, tmp_path):
    shutil.copytree(built.out_dir, tmp_path, dirs_exist_ok=True)
    assert (tmp_path / "plots" / "general.png").is_file()
    build_report(files.minimal, tmp_path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["env_scores.png", "overall.png"]


def test_same_inputs_same_bytes(built, files, tmp_path):
    again = build_report(files.inputs, tmp_path)
    for name in ("report.md", "report.html", "trajectories.html", "report.json"):
        assert (tmp_path / name).read_bytes() == (built.out_dir / name).read_bytes(), name
    for name in PLOTS:
        assert again.plots[name].read_bytes() == built.plots[name].read_bytes(), name
    assert b"tEXtSoftware" not in built.plots["training"].read_bytes()  # no metadata that varies


def _agent_copy(files, tmp_path):
    dst = tmp_path / "tuned"
    shutil.copytree(files.inputs.agent["tuned"], dst)
    return dst


@pytest.mark.parametrize("case", ["not_json", "not_results", "missing", "bad_general", "bad_stats", "bad_mix",
                                  "bad_metrics", "bad_teacher", "bad_eval_trajectory"])  # fmt: skip
def test_malformed_inputs_name_the_file(files, tmp_path, case):
    tuned = _agent_copy(files, tmp_path)
    bad = tmp_path / "bad.json"
    inputs = dataclasses.replace(files.minimal, agent={"base": files.inputs.agent["base"], "tuned": tuned})
    if case == "not_json":
        bad = tuned / "results.json"
        bad.write_text('{"results_version": 1,')
        error, message = ReportInputError, "invalid JSON"
    elif case == "not_results":
        bad = tuned / "results.json"
        bad.write_text('{"results_version": 1}')
        error, message = ReportInputError, "not an agent results file"
    elif case == "missing":
        bad = tmp_path / "nowhere" / "results.json"
        inputs = dataclasses.replace(inputs, agent={"base": files.inputs.agent["base"], "tuned": bad})
        error, message = ReportInputError, "not found"
    elif case == "bad_general":
        bad.write_text('{"loss": 2.0, "n": 4}')
        inputs = dataclasses.replace(inputs, general={"tuned": bad})
        error, message = ReportInputError, ("not a general-eval result: perplexity: Field required; "
                                            "exact_match: Field required; tokens: Field required")
    elif case == "bad_stats":
        bad.write_text('{"envs": [{"env": "db-v1"}]}')
        inputs = dataclasses.replace(inputs, data_stats=bad)
        error, message = ReportInputError, r"envs\[0\] needs"
    elif case == "bad_mix":
        bad.write_text("[1, 2]")
        inputs = dataclasses.replace(inputs, mix=bad)
        error, message = ReportInputError, "not a mix metrics file"
    elif case == "bad_metrics":
        bad = tmp_path / "metrics.jsonl"
        bad.write_text('{"step": 1, "loss": 2.0}\n{"loss": 1.0}\n')
        inputs = dataclasses.replace(inputs, train_metrics=bad)
        error, message = RecordError, ":2: a metrics record must be a JSON object with an integer 'step'"
    elif case == "bad_teacher":
        bad = tmp_path / "teacher.jsonl"
        bad.write_text(files.inputs.teacher_trajectories[0].read_text() + '{"task": 1}\n')
        inputs = dataclasses.replace(inputs, teacher_trajectories=[bad])
        error, message = RecordError, r":13: task"
    else:  # the trajectories named by a results file
        bad = tuned / "db-v1.jsonl"
        bad.write_text("not json\n")
        error, message = RecordError, ":1: invalid JSON"
    out = tmp_path / "report"
    with pytest.raises(error, match=re.escape(str(bad)) + ".*" + message):
        build_report(inputs, out)
    assert not out.exists()  # inputs are checked before anything is written


def test_a_spec_file_with_relative_paths(files, tmp_path):
    root = files.root
    spec = {
        "title": "from a spec",
        "agent": {"base": "eval/base", "tuned": "eval/tuned/results.json"},
        "general": {m: str(p.relative_to(root)) for m, p in files.inputs.general.items()},
        "data_stats": "agentinstruct/stats.json",
        "teacher_trajectories": ["teacher/db.jsonl"],
        "sweep": [{"label": "eta=0.1", "eta": 0.1, "agent": "eval/sweep0", "general": "sweep0-general.json"}],
        "provenance": {"machine": "CI"},
        "notes": ["a note"],
        "viewer_per_env": 3,
    }
    path = root / "report.yaml"
    path.write_text(yaml.safe_dump(spec))
    inputs = load_report_inputs(path)
    assert inputs.agent == {"base": root / "eval/base", "tuned": root / "eval/tuned/results.json"}
    assert inputs.sweep[0].filtered is True and inputs.sweep[0].general == root / "sweep0-general.json"
    assert inputs.teacher_trajectories == [root / "teacher/db.jsonl"] and inputs.notes == ["a note"]
    assert inputs.viewer_per_env == 3
    assert headline_table(inputs) == headline_table(files.inputs)
    path.write_text("title: no agent\n")
    with pytest.raises(ReportInputError, match=re.escape(str(path)) + ".*agent"):
        load_report_inputs(path)
    path.write_text("agent: {base: eval/base}\nviewer_per_envs: 3\n")  # read by the one config loader: typos named
    with pytest.raises(ReportInputError, match="unknown config key 'viewer_per_envs'; did you mean viewer_per_env"):
        load_report_inputs(path)


def test_inputs_are_checked_when_made(files):
    with pytest.raises(ValueError, match="at least one model"):
        ReportInputs("t", agent={})
    with pytest.raises(ValueError, match="not in agent"):
        ReportInputs("t", agent=files.inputs.agent, general={"other": files.inputs.general["base"]})


def test_one_model_and_sparse_inputs(files, tmp_path):
    """One model (no before/after), stats without decontamination, metrics without eval records, a sweep of
    unfiltered points without general results: every section still renders."""
    stats = json.loads(files.inputs.data_stats.read_text())
    del stats["decontam"]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n"
                                                    for s in range(1, 6)))  # fmt: skip
    sweep = [dataclasses.replace(p, filtered=False, general=None) for p in files.inputs.sweep[:2]]
    inputs = ReportInputs("one", agent={"tuned": files.inputs.agent["tuned"]}, data_stats=tmp_path / "stats.json",
                          train_metrics=tmp_path / "metrics.jsonl", sweep=sweep)  # fmt: skip
    paths = build_report(inputs, tmp_path / "out")
    header = paths.headline.splitlines()[0]
    assert "success · tuned" in header and "Δ" not in header
    md = paths.markdown.read_text()
    assert "decontamination and deduplication dropped" not in md and "eval agent loss" not in md
    assert re.search(r"\| eta=0\.1 \| 0\.1 \| unfiltered \| \d\.\d\d \| \d\.\d\d \| - \| - \|", md)
    assert sorted(paths.plots) == ["data", "env_scores", "overall", "sweep", "training"]


def test_behaviour_table_counts_parsable_replies_and_self_ended_episodes(built, files):
    from agenttuning.jsonl import read_records
    from agenttuning.schema import Trajectory

    md = built.markdown.read_text()
    assert "\n### Behaviour" in md
    results = json.loads((files.inputs.agent["base"] / "results.json").read_text())
    for env in results["envs"]:
        trajs = read_records(files.inputs.agent["base"] / env["trajectories"], Trajectory)
        steps = [s for t in trajs for s in t.steps]
        parsable = sum(s.parse_error is None for s in steps) / len(steps)
        ended = sum(t.end_reason == "done" for t in trajs) / len(trajs)
        row = f"| base | {env['env_id']} | {len(trajs)} | {parsable:.1%} | {ended:.1%} | {len(steps) / len(trajs):.1f} |"
        assert row in md, row
