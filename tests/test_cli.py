"""The command line, run in-process: each command does what the README says, bad input exits 2 with one line."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.jsonl import read_records
from agenttuning.schema import Task, Trajectory

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_envs_lists_db():
    r = run("envs")
    assert r.exit_code == 0 and "db-v1" in r.output and "796" in r.output and "212" in r.output


def test_tasks_jsonl_round_trips():
    r = run("tasks", "--env", "db", "--split", "test", "-n", "3", "--jsonl")
    tasks = [Task.model_validate_json(line) for line in r.output.splitlines()]
    assert [t.id for t in tasks] == ["db-test-00000", "db-test-00001", "db-test-00002"]


def test_expert_rollout_over_the_whole_test_split_succeeds_everywhere(tmp_path):
    out = tmp_path / "db.jsonl"
    r = run("rollout", "--env", "db", "--split", "test", "--policy", "expert", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    trajs = read_records(out, Trajectory)
    assert len(trajs) == 212 and all(t.success and t.reward == 1.0 for t in trajs)
    assert "100.0%" in r.output


def test_wrong_policy_scores_zero(tmp_path):
    out = tmp_path / "db.jsonl"
    r = run("rollout", "--env", "db", "--split", "test", "-n", "40", "--policy", "wrong", "--out", str(out),
            "--no-progress")
    assert r.exit_code == 0
    trajs = read_records(out, Trajectory)
    assert len(trajs) == 40 and sum(t.reward for t in trajs) == 0 and not any(t.success for t in trajs)


def test_noisy_teacher_fails_some_and_is_reproducible(tmp_path):
    for name in ("a", "b"):
        run("rollout", "--env", "db", "--split", "train", "-n", "60", "--policy", "noisy:0.3", "--out",
            str(tmp_path / f"{name}.jsonl"), "--no-progress")
    a = {t.task.id: t.success for t in read_records(tmp_path / "a.jsonl", Trajectory)}
    b = {t.task.id: t.success for t in read_records(tmp_path / "b.jsonl", Trajectory)}
    assert a == b and 0 < sum(a.values()) < 60


def test_malformed_tasks_file_is_one_clear_error_and_writes_nothing(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    good = run("tasks", "--env", "db", "--split", "test", "-n", "2", "--jsonl").output.splitlines()
    tasks.write_text(good[0] + "\n" + good[1][:-5] + "\n")
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["rollout", "--env", "db", "--tasks", str(tasks), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2
    assert f"{tasks}:2: invalid JSON" in r.output.replace("\n", "")
    assert "Traceback" not in r.output and not out.exists()


def test_tasks_of_another_environment_are_refused(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(Task(id="x-1", env="web-v1", split="test", instruction="q").model_dump_json() + "\n")
    r = runner.invoke(app, ["rollout", "--env", "db", "--tasks", str(tasks), "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "do not belong to db-v1" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["rollout", "--env", "nope", "--out", "x.jsonl"], "unknown environment"),
        (["rollout", "--env", "db", "--shard", "5/4", "--out", "x.jsonl"], "shard"),
        (["rollout", "--env", "db", "--policy", "noisy:abc", "--out", "x.jsonl"], "probability"),
        (["rollout", "--env", "db", "--policy", "magic", "--out", "x.jsonl"], "unknown policy"),
        (["eval", "--policy", "noisy:7", "--out", "x.jsonl"], "probability"),  # before the out folder is made
        (["tasks", "--env", "db", "--split", "dev"], "--split must be train or test"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.jsonl").exists()


def test_existing_output_without_resume_is_refused_and_untouched(tmp_path):
    out = tmp_path / "o.jsonl"
    run("rollout", "--env", "db", "--split", "test", "-n", "2", "--out", str(out), "--no-progress")
    before = out.read_bytes()
    r = runner.invoke(app, ["rollout", "--env", "db", "--split", "test", "-n", "4", "--out", str(out)])
    assert r.exit_code == 2 and "resume" in r.output
    assert out.read_bytes() == before
    r = run("rollout", "--env", "db", "--split", "test", "-n", "4", "--out", str(out), "--resume", "--no-progress")
    assert r.exit_code == 0 and len(read_records(out, Trajectory)) == 4


def test_show_renders_thought_action_observation(tmp_path):
    out = tmp_path / "o.jsonl"
    run("rollout", "--env", "db", "--split", "test", "-n", "2", "--out", str(out), "--no-progress")
    r = run("show", str(out), "--id", "db-test-00001")
    assert r.exit_code == 0
    for word in ("Thought", "Action", "Operation", "Observation", "SUCCESS", "db-test-00001", "[db-v1]"):
        assert word in r.output
    assert run("show", str(out), "--outcome", "failure").output.count("SUCCESS") == 0
    r = runner.invoke(app, ["show", str(out), "--id", "missing"])
    assert r.exit_code == 2 and "no trajectory" in r.output


def test_check_command_passes_for_db():
    r = run("check", "--env", "db", "--max-tasks", "30")
    # seven contract checks (payloads included) and three adversarial ones (bounded actions, no leaks, lifecycle)
    assert r.exit_code == 0 and "FAIL" not in r.output and r.output.count("│ pass   │") == 10, r.output


def test_resume_appends_only_missing(tmp_path):
    out = tmp_path / "o.jsonl"
    run("rollout", "--env", "db", "--split", "test", "-n", "3", "--out", str(out), "--no-progress")
    run("rollout", "--env", "db", "--split", "test", "-n", "6", "--out", str(out), "--resume", "--no-progress")
    ids = [json.loads(line)["task"]["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6


def test_filter_decontaminate_prepare_mix(tmp_path):
    """The README's data commands, in order, on a real noisy rollout."""
    runs = tmp_path / "runs.jsonl"
    run("rollout", "--env", "db", "--split", "train", "-n", "40", "--policy", "noisy:0.3", "--out", str(runs),
        "--no-progress")
    n_success = sum(t.success for t in read_records(runs, Trajectory))
    r = run("filter", str(runs), "--out", str(tmp_path / "kept"))
    assert r.exit_code == 0 and "db-v1" in r.output
    assert len((tmp_path / "kept" / "kept.jsonl").read_text().splitlines()) == n_success
    stats = json.loads((tmp_path / "kept" / "stats.json").read_text())
    assert stats["envs"][-1]["env"] == "all" and stats["envs"][-1]["total"] == 40
    assert stats["envs"][-1]["kept"] == n_success
    r = run("decontaminate", str(tmp_path / "kept"), "--out", str(tmp_path / "ai"))
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "ai" / "db.jsonl").read_text().splitlines()
    assert 0 < len(lines) <= n_success  # only successful ones survive (minus any decontaminated)
    rec = json.loads(lines[0])
    assert set(rec) == {"id", "conversations"} and rec["conversations"][-1]["loss"] is True
    assert json.loads((tmp_path / "ai" / "stats.json").read_text())["envs"] == stats["envs"]  # carried forward
    r = run("prepare", str(tmp_path / "ai"), "--tokenizer", "llama3", "--no-pack", "--max-len", "2048",
            "--out", str(tmp_path / "prepared"))  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run("mix", "--agent", str(tmp_path / "prepared"), "--out", str(tmp_path / "mix"), "--eta", "1", "-n", "5")
    assert r.exit_code == 0 and json.loads((tmp_path / "mix" / "metrics.json").read_text())["draws"]["agent"] == 5
    r = runner.invoke(app, ["filter", str(runs), "--out", str(tmp_path / "x"), "--min-reward", "db=abc"])
    assert r.exit_code == 2 and "FAMILY=VALUE" in r.output


def test_no_progress_also_silences_the_libraries_bars(monkeypatch):
    from transformers.utils import logging as hf_logging

    from agenttuning.cli import _library_progress

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hf_logging.enable_progress_bar()
    try:
        _library_progress(True)
        assert hf_logging.is_progress_bar_enabled() and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
        _library_progress(False)
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # child processes inherit it
    finally:
        hf_logging.enable_progress_bar()
