"""The headline table: its numbers are the results' numbers, its overall score is agenttuning.eval.score's."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from agenttuning.eval.agent import load_agent_result
from agenttuning.eval.score import (
    load_normalisers,
    overall,
    overall_report,
    scores_from_results,
)
from agenttuning.report import ReportInputError, ReportInputs, headline_table

NUM = r"[-+]?\d+(?:\.\d+)?"


def parse(table: str) -> tuple[list[str], list[list[str]]]:
    """A Markdown table back into header and rows (cells stripped, bold marks removed)."""
    lines = [line for line in table.strip().splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("**", "") for c in line.strip("|").split(" | ")] for line in lines]
    return cells[0], cells[2:]


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(NUM, cell)]


def test_headline_numbers_are_the_results_numbers(files):
    header, rows = parse(headline_table(files.inputs))
    assert header == ["group", "environment", "n", "success · base", "success · tuned", "Δ success",
                      "mean reward · base", "mean reward · tuned", "Δ mean reward"]  # fmt: skip
    results = {m: {e.env_id: e for e in load_agent_result(p).envs} for m, p in files.inputs.agent.items()}
    env_rows = [r for r in rows if r[1] != "overall"]
    assert [(r[0], r[1]) for r in env_rows] == [("held-in", "db-v1"), ("held-out", "lookup-v1")]
    for group, env, n, s_base, s_tuned, ds, r_base, r_tuned, dr in env_rows:
        b, t = results["base"][env], results["tuned"][env]
        assert group == b.group and int(n) == b.n == t.n
        for cell, e in ((s_base, b), (s_tuned, t)):
            rate, lo, hi = numbers(cell)
            assert rate == pytest.approx(100 * e.success_rate, abs=0.05)
            assert (lo, hi) == (pytest.approx(100 * e.success_ci[0], abs=0.05),
                                pytest.approx(100 * e.success_ci[1], abs=0.05))  # fmt: skip
        for cell, e in ((r_base, b), (r_tuned, t)):
            mean, lo, hi = numbers(cell)
            assert (mean, lo, hi) == (pytest.approx(e.mean_reward, abs=5e-4), pytest.approx(e.reward_ci[0], abs=5e-4),
                                      pytest.approx(e.reward_ci[1], abs=5e-4))  # fmt: skip
        assert numbers(ds)[0] == pytest.approx(100 * (t.success_rate - b.success_rate), abs=0.05)
        assert numbers(dr)[0] == pytest.approx(t.mean_reward - b.mean_reward, abs=5e-4)
    # the runs really differ: noisy:0.5 fails some tasks, the expert none
    assert results["base"]["db-v1"].success_rate < 1.0 == results["tuned"]["db-v1"].success_rate


def test_overall_rows_equal_eval_score(files):
    _, rows = parse(headline_table(files.inputs))
    scores, groups = scores_from_results({m: str(p) for m, p in files.inputs.agent.items()})
    expected = overall_report(scores, groups).scores
    overall_rows = {r[0]: r for r in rows if r[1] == "overall"}
    assert set(overall_rows) == {"held-in", "held-out"}
    for group, row in overall_rows.items():
        base, tuned, delta = (numbers(c)[0] for c in row[6:9])  # mean reward columns: the metric used
        assert base == pytest.approx(expected["base"][group], abs=0.005)
        assert tuned == pytest.approx(expected["tuned"][group], abs=0.005)
        assert delta == pytest.approx(expected["tuned"][group] - expected["base"][group], abs=0.01)
        assert row[3:6] == ["", "", ""] and int(row[2]) == len(groups[group])


def test_success_rate_metric_and_fixed_normalisers(files, tmp_path):
    norms = tmp_path / "normalisers.json"
    norms.write_text(json.dumps({"db-v1": 0.5, "lookup-v1": 0.25}))
    inputs = ReportInputs("t", agent=files.inputs.agent, normalisers=norms, metric="success_rate")
    _, rows = parse(headline_table(inputs))
    scores, groups = scores_from_results({m: str(p) for m, p in inputs.agent.items()}, metric="success_rate")
    expected = overall(scores, groups, load_normalisers(norms))
    for row in (r for r in rows if r[1] == "overall"):
        assert [numbers(c)[0] for c in row[3:5]] == [pytest.approx(expected[m][row[0]], abs=0.005)
                                                     for m in ("base", "tuned")]  # fmt: skip
        assert row[6:9] == ["", "", ""]  # now in the success columns
    # fixed normalisers: tuned (success 1.0) on db = 1.0 / 0.5 = 2.0, on lookup = 1.0 / 0.25 = 4.0
    assert expected["tuned"] == {"held-in": pytest.approx(2.0), "held-out": pytest.approx(4.0)}


def test_three_models_compare_first_and_last_normalised_over_all(files):
    sweep = files.inputs.sweep[0].agent
    agent = {"base": files.inputs.agent["base"], "mid": sweep, "tuned": files.inputs.agent["tuned"]}
    header, rows = parse(headline_table(ReportInputs("t", agent=agent)))
    assert "success · mid" not in header and "success · tuned" in header
    scores, groups = scores_from_results({m: str(p) for m, p in agent.items()})
    expected = overall(scores, groups)  # the normaliser averages all three models
    row = next(r for r in rows if r[:2] == ["held-in", "overall"])
    assert numbers(row[7])[0] == pytest.approx(expected["tuned"]["held-in"], abs=0.005)
    two = overall(*scores_from_results({m: str(agent[m]) for m in ("base", "tuned")}))
    assert round(two["tuned"]["held-in"], 2) != round(expected["tuned"]["held-in"], 2)


def _copy_results(src, dst, **env_updates):
    """A copy of a results directory with some fields of every environment changed."""
    shutil.copytree(src, dst)
    r = load_agent_result(dst)
    envs = [e.model_copy(update={k: v(e) if callable(v) else v for k, v in env_updates.items()}) for e in r.envs]
    (dst / "results.json").write_text(r.model_copy(update={"envs": envs}).model_dump_json(indent=2))
    return dst


def test_a_task_every_model_failed_is_skipped_and_said(files, tmp_path):
    zero = {"mean_reward": lambda e: 0.0 if e.env == "lookup" else e.mean_reward}
    agent = {"base": _copy_results(files.inputs.agent["base"], tmp_path / "b", **zero),
             "tuned": _copy_results(files.inputs.agent["tuned"], tmp_path / "t", **zero)}  # fmt: skip
    table = headline_table(ReportInputs("t", agent=agent))
    _, rows = parse(table)
    held_out = next(r for r in rows if r[:2] == ["held-out", "overall"])
    assert held_out[2] == "0" and held_out[6:9] == ["-", "-", "-"]
    assert "held-out: lookup-v1 skipped (every reference model scored 0)" in table


def test_incomparable_results_are_refused_naming_the_file(files, tmp_path):
    other = _copy_results(files.inputs.agent["tuned"], tmp_path / "other", prompt_hash="0" * 16)
    with pytest.raises(ReportInputError, match=re.escape(str(other)) + ".*prompt hashes"):
        headline_table(ReportInputs("t", agent={"base": files.inputs.agent["base"], "tuned": other}))
