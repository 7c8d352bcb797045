"""The paper's overall score on a worked example computed by hand, and its edge cases."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from agenttuning.eval.agent import evaluate_agent
from agenttuning.eval.score import (
    load_normalisers,
    normalisers,
    overall,
    overall_report,
    scores_from_results,
)

# Two models, four tasks; held-in = t1, t2; held-out = t3, t4.
SCORES = {
    "A": {"t1": 0.9, "t2": 0.4, "t3": 0.5, "t4": 0.0},
    "B": {"t1": 0.3, "t2": 0.4, "t3": 0.0, "t4": 0.0},
}
GROUPS = {"held-in": ["t1", "t2"], "held-out": ["t3", "t4"]}
# By hand:
#   normalisers (mean over A and B): t1 = (0.9 + 0.3)/2 = 0.6, t2 = 0.4, t3 = (0.5 + 0)/2 = 0.25, t4 = 0
#   held-in:  A = (0.9/0.6 + 0.4/0.4)/2 = (1.5 + 1.0)/2 = 1.25;  B = (0.3/0.6 + 0.4/0.4)/2 = (0.5 + 1.0)/2 = 0.75
#             (a plain mean of raw scores would give A 0.65, B 0.35: t1's spread would dominate)
#   held-out: t4 has normaliser 0 (both scored 0) -> skipped; A = 0.5/0.25 = 2.0, B = 0/0.25 = 0.0


def test_worked_example_by_hand():
    assert normalisers(SCORES) == pytest.approx({"t1": 0.6, "t2": 0.4, "t3": 0.25, "t4": 0.0})
    got = overall(SCORES, GROUPS)
    assert got == {"A": pytest.approx({"held-in": 1.25, "held-out": 2.0}),
                   "B": pytest.approx({"held-in": 0.75, "held-out": 0.0})}  # fmt: skip


def test_normalised_scores_average_to_one_per_task():
    norms = normalisers(SCORES)
    for t in ("t1", "t2", "t3"):
        assert sum(SCORES[m][t] / norms[t] for m in SCORES) / len(SCORES) == pytest.approx(1.0)


def test_zero_normaliser_is_skipped_and_reported():
    report = overall_report(SCORES, GROUPS)
    assert report.skipped == {"held-out": ["t4"]}
    # a group whose every task has normaliser 0 has no overall score at all
    only_zero = overall(SCORES, {"zero": ["t4"], "held-in": ["t1", "t2"]})
    assert all("zero" not in per_group and "held-in" in per_group for per_group in only_zero.values())
    console = Console(record=True, width=200)
    console.print(report.table())
    text = console.export_text()
    assert "skipped t4" in text and "1.25" in text and "2.00" in text


def test_fixed_normalisers_from_a_file(tmp_path):
    path = tmp_path / "norms.json"
    path.write_text(json.dumps({"t1": 0.3, "t2": 0.8, "t3": 0.5, "t4": 0.1}))
    norms = load_normalisers(path)
    # held-in: A = (0.9/0.3 + 0.4/0.8)/2 = (3 + 0.5)/2 = 1.75; B = (0.3/0.3 + 0.4/0.8)/2 = 0.75
    # held-out: A = (0.5/0.5 + 0/0.1)/2 = 0.5; B = 0
    got = overall(SCORES, GROUPS, norms)
    assert got == {"A": pytest.approx({"held-in": 1.75, "held-out": 0.5}),
                   "B": pytest.approx({"held-in": 0.75, "held-out": 0.0})}  # fmt: skip
    assert overall_report(SCORES, GROUPS, norms).fixed_normalisers
    with pytest.raises(ValueError, match="no normaliser"):
        overall(SCORES, GROUPS, {"t1": 1.0})
    path.write_text('{"t1": "high"}')
    with pytest.raises(ValueError, match="env_id: number"):
        load_normalisers(path)


def test_missing_scores_and_bad_normalisers_are_errors():
    with pytest.raises(ValueError, match="no score"):
        overall({"A": {"t1": 1.0}, "B": {"t1": 0.5, "t2": 0.5}}, {"g": ["t1", "t2"]})
    with pytest.raises(ValueError, match=">= 0"):
        overall(SCORES, GROUPS, {"t1": -1.0, "t2": 1, "t3": 1, "t4": 1})


def test_scores_from_agent_results(registry, tmp_path):
    for policy in ("expert", "wrong"):
        evaluate_agent(policy, ["lookup", "lookup_ho"], held_in={"lookup"}, out_dir=tmp_path / policy, n=2)
    scores, groups = scores_from_results({"expert": tmp_path / "expert", "wrong": tmp_path / "wrong"})
    assert scores == {
        "expert": {"lookup-v1": 1.0, "lookup_ho-v1": 1.0},
        "wrong": {"lookup-v1": 0.0, "lookup_ho-v1": 0.0},
    }
    assert groups == {"held-in": ["lookup-v1"], "held-out": ["lookup_ho-v1"]}
    # normaliser 0.5 per task: expert 1/0.5 = 2, wrong 0
    assert overall(scores, groups) == {"expert": {"held-in": 2.0, "held-out": 2.0},
                                       "wrong": {"held-in": 0.0, "held-out": 0.0}}  # fmt: skip
    evaluate_agent("expert", ["lookup"], held_in=None, out_dir=tmp_path / "other", n=2)
    with pytest.raises(ValueError, match="comparable"):
        scores_from_results({"expert": tmp_path / "expert", "other": tmp_path / "other"})
