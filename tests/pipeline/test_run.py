"""The pipeline end to end on a tiny scratch model: every stage runs once, a re-run runs nothing, eta re-runs only
what depends on it, and a stage killed before its manifest is redone alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from agenttuning.pipeline import load_pipeline_config, run_pipeline, run_sweep
from agenttuning.pipeline.run import sweep_variants

TINY = [
    "teacher.n=12", "general.n=150", "general.held_out=8",
    "model.name=scratch:tiny", "model.vocab_size=600", "model.max_position_embeddings=2048",
    "train.max_steps=2", "prepare.max_len=2048", "train.batch_size=4", "train.eval_every=0", "train.eval_fraction=0",
    "train.log_every=1", "eval.n=2", "eval.max_turns=1", "eval.max_new_tokens=8", "eval.general_n=4",
]  # fmt: skip


def _run(out: Path, *extra: str, **kw: object):
    cfg = load_pipeline_config("scratch", [f"out={out}", *TINY, *extra])
    return run_pipeline(cfg, console=Console(file=open("/dev/null", "w")), progress=False, **kw)  # noqa: SIM115


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pipeline")
    return out, _run(out)


def test_every_stage_runs_and_the_report_reads_their_files(first) -> None:
    out, run = first
    assert run.ran() == ["tasks", "rollout", "filter", "construction", "decontaminate", "general", "tokenizer", "model", "prepare", "mix",
                         "train", "eval-base", "eval-tuned", "report"]
    for rec in run.records.values():
        manifest = json.loads((rec.dir / "manifest.json").read_text())
        assert manifest["key"] == rec.key and rec.dir.name == f"{rec.name}-{rec.key[:12]}"
    # the teacher made mistakes and the filter dropped exactly those
    teacher = run.records["rollout"].result["envs"]["db-v1"]
    kept = run.records["filter"].result["n_kept"]
    assert teacher["n"] == 12 and kept == teacher["successes"] < 12
    # base and tuned evaluated on every registered environment, db held-in, the rest held-out
    results = json.loads((run.records["eval-tuned"].dir / "agent" / "results.json").read_text())
    groups = {e["env_id"].split("-")[0]: e["group"] for e in results["envs"]}
    assert groups["db"] == "held-in" and groups["kg"] == "held-out"
    # the trained model is a real HF folder the hf policy loaded, with a training curve
    assert (run.records["train"].dir / run.records["train"].result["model"] / "config.json").exists()
    assert (out / "report" / "report.html").exists() and (out / "report" / "trajectories.html").exists()
    doc = json.loads((out / "run.json").read_text())
    assert set(doc["stages"]) == set(run.records) and doc["config"]["mix"]["eta"] == 0.2


def test_a_second_run_redoes_nothing_and_finishes_in_seconds(first) -> None:
    out, _ = first
    t0 = time.perf_counter()
    again = _run(out)
    assert again.ran() == []
    assert time.perf_counter() - t0 < 30


def test_changing_eta_redoes_only_mix_train_eval_and_report(first) -> None:
    out, run = first
    changed = _run(out, "mix.eta=0.5")
    assert changed.ran() == ["mix", "train", "eval-tuned", "report"]
    assert changed.records["prepare"].dir == run.records["prepare"].dir
    assert changed.records["eval-base"].dir == run.records["eval-base"].dir
    assert changed.records["mix"].result["eta"] == 0.5 and (out / "report").resolve() == changed.report.resolve()


def test_a_stage_killed_before_its_manifest_is_redone_alone(first) -> None:
    out, run = first
    (run.records["train"].dir / "manifest.json").unlink()  # what a kill between the model and the manifest leaves
    again = _run(out)
    assert again.ran() == ["train"]
    assert again.records["train"].result["steps"] == run.records["train"].result["steps"]


def test_the_cli_prints_stages_and_the_headline(first) -> None:
    from typer.testing import CliRunner

    from agenttuning.cli import app

    out, _ = first
    result = CliRunner().invoke(app, ["pipeline", "scratch", f"out={out}", *TINY, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "cached" in result.output and "base vs tuned" in result.output and "db-v1" in result.output
    bad = CliRunner().invoke(app, ["pipeline", "default", "mix.etaa=1"])
    assert bad.exit_code == 2 and "mix.etaa" in bad.output


def test_sweep_variants_cover_eta_and_unfiltered() -> None:
    cfg = load_pipeline_config("default", ["sweep.eta=[0.2, 0.5, 1.0]", "sweep.unfiltered=true"])
    labels = [(label, v.mix.eta, v.filter.enabled) for label, v, _, _ in sweep_variants(cfg)]
    assert labels == [("eta=0.2", 0.2, True), ("eta=0.5", 0.5, True), ("eta=1", 1.0, True),
                      ("eta=0.2 unfiltered", 0.2, False)]


@pytest.mark.slow
def test_sweep_shares_stages_and_reports_every_point(tmp_path: Path) -> None:
    cfg = load_pipeline_config("scratch", [f"out={tmp_path}", *TINY, "sweep.eta=[0.2, 1.0]", "sweep.unfiltered=true"])
    run = run_sweep(cfg, console=Console(file=open("/dev/null", "w")), progress=False)  # noqa: SIM115
    trains = {p.name for p in (tmp_path / "stages").iterdir() if p.name.startswith("train-")}
    assert len(trains) == 3  # eta 0.2, eta 1.0, eta 0.2 unfiltered; the main run reused eta 0.2's
    assert len({p.name for p in (tmp_path / "stages").iterdir() if p.name.startswith("eval-base-")}) == 1
    assert [p.label for p in run.sweep] == ["eta=0.2", "eta=1", "eta=0.2 unfiltered"]
    assert "eta sweep" in (tmp_path / "report" / "report.md").read_text().lower()
