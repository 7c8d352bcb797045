"""Data parallelism: two CPU processes (gloo) with half the micro-batches each give one process's losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agenttuning.train import load_config, train

ROOT = Path(__file__).resolve().parents[2]


def _losses(run: Path) -> tuple[list[float], list[dict]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r for r in records if "eval_agent_loss" in r]


def test_two_processes_match_one_process_with_accumulation(tmp_path, base_overrides):
    """``accelerate launch`` (configs/accelerate/ddp_cpu.yaml: 2 processes, gloo) with 1 micro-batch each vs one
    process with grad_accum=2: the same global batch cut into the same two micro-batches, the gradients summed by
    all-reduce instead of accumulation. Losses agree to float32 rounding, step for step."""
    common = [*base_overrides, "max_steps=6", "eval_fraction=0.1", "eval_every=3", "save_every=3"]
    one = train(load_config(None, [*common, f"output_dir={tmp_path / 'one'}", "grad_accum=2"]))

    run = tmp_path / "two"
    cfg = load_config(None, [*common, f"output_dir={run}", "grad_accum=1"])
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/ddp_cpu.yaml"), "--main_process_port", "0", "-m", "agenttuning.train",
           "--config", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]

    summary = json.loads((run / "metrics.json").read_text())
    assert summary["num_processes"] == 2
    losses, evals = _losses(run)
    ref_losses, ref_evals = _losses(tmp_path / "one")
    assert losses == pytest.approx(one.losses, rel=1e-5) and ref_losses == one.losses
    assert [e["step"] for e in evals] == [e["step"] for e in ref_evals] == [0, 3, 6]
    for e, r in zip(evals, ref_evals, strict=True):
        assert e["eval_agent_loss"] == pytest.approx(r["eval_agent_loss"], rel=1e-5)
        assert e["eval_general_loss"] == pytest.approx(r["eval_general_loss"], rel=1e-5)
    ckpt = run / "checkpoints" / "step-00000003"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
