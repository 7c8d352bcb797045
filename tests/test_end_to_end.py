"""Stages 1 and 2 through the command line: teacher rollouts -> filter -> prepare -> train a tiny model on CPU ->
the tuned model acts through the hf policy. Real parts only (SQLite environment, real Mistral tokenizer, a tiny
random-init Llama saved to disk and loaded by path)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.data.formats import write_examples
from agenttuning.data.general import stdlib_examples
from agenttuning.jsonl import read_records
from agenttuning.schema import Trajectory
from agenttuning.tokens.offline import save_tokenizer
from tests.tiny_models import tiny_mistral_llama

runner = CliRunner()


def run(*args):
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_rollout_filter_prepare_train_then_act(tmp_path):
    model, tok = tiny_mistral_llama()
    base = tmp_path / "base"
    model.save_pretrained(base)
    save_tokenizer(tok, base)

    run("rollout", "--env", "db", "--split", "train", "-n", "24", "--policy", "noisy:0.25", "--out",
        tmp_path / "runs.jsonl", "--no-progress")
    run("filter", tmp_path / "runs.jsonl", "--out", tmp_path / "ai")
    write_examples(stdlib_examples(40), tmp_path / "general.jsonl")
    for name, src in (("agent", tmp_path / "ai"), ("general", tmp_path / "general.jsonl")):
        run("prepare", src, "--tokenizer", base, "--template", "mistral", "--no-pack", "--max-len", "2048",
            "--out", tmp_path / "prep" / name)
    r = run("train", "model=" + str(base), f"agent_data={tmp_path / 'prep' / 'agent'}",
            f"general_data={tmp_path / 'prep' / 'general'}", "eta=0.5", "max_len=2048", "method=full",
            "precision=fp32", "batch_size=4", "max_steps=6", "lr=1e-3", "warmup_ratio=0.0", "eval_fraction=0.2",
            "eval_every=3", "cpu=true", f"output_dir={tmp_path / 'out'}")
    assert "eval_agent_loss" in r.output and "eval_general_loss" in r.output
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]

    # the tuned model acts in the environment through the hf policy, loaded by path like any HF model
    model_dir = next(p for p in (tmp_path / "out").rglob("config.json") if "checkpoint" not in str(p)).parent
    run("rollout", "--env", "db", "--split", "test", "-n", "2", "--policy", f"hf:{model_dir}", "--max-tokens", "8",
        "--max-turns", "2", "--out", tmp_path / "eval.jsonl", "--no-progress")
    trajs = read_records(tmp_path / "eval.jsonl", Trajectory)
    assert len(trajs) == 2 and all(t.policy == f"hf:{model_dir}" and t.usage.requests >= 1 for t in trajs)


def test_packed_rows_are_refused_for_training(tmp_path):
    from agenttuning.jsonl import RecordError
    from agenttuning.train.data import load_token_table

    (tmp_path / "p.jsonl").write_text(json.dumps({"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 1],
                                                  "seq_lens": [2]}) + "\n")
    with pytest.raises(RecordError, match="--no-pack") as e:
        load_token_table(tmp_path / "p.jsonl", max_len=16)
    assert str(e.value).startswith(f"{tmp_path / 'p.jsonl'}:1:")
