"""`agenttuning serve` + `agenttuning eval` on a tiny model over real HTTP on loopback, every registered environment:
the tuned-model path a user takes, with the model behind the same openai policy as any remote API."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.envs.base import available
from agenttuning.serve import create_app
from tests.test_serve import ServerThread
from tests.tiny_models import tiny_llama3


def test_eval_of_a_served_tiny_model_on_every_environment(tmp_path):
    model, tok = tiny_llama3()
    server = ServerThread(create_app(model, tok, served_name="tiny", max_new_tokens_default=8, batch_size=8,
                                     batch_wait_ms=20))
    with server:
        r = CliRunner().invoke(app, [
            "eval", "--policy", "openai:tiny", "--base-url", server.base_url, "--api-key", "x", "--envs", "all",
            "-n", "3", "--max-turns", "2", "--max-tokens", "8", "--temperature", "0", "--out", str(tmp_path),
        ], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        stats = httpx.get(f"{server.base_url}/stats", timeout=10).json()
    results = json.loads((tmp_path / "results.json").read_text())
    envs = {e["env_id"]: e for e in results["envs"]}
    runnable = [d for d in available() if d.unavailable_reason() is None]  # 'all' leaves out the others, saying why
    assert set(envs) == {d.id for d in runnable}
    for d in runnable:
        e = envs[d.id]
        assert e["n"] == 3 and e["prompt_hash"] and e["group"] in ("held-in", "held-out")
        trajs = [json.loads(x) for x in (tmp_path / f"{d.id}.jsonl").read_text().splitlines()]
        # every episode went through HTTP: usage came back from the server, nothing crashed
        assert len(trajs) == 3 and all(t["policy"] == "openai:tiny" and t["usage"]["requests"] >= 1 for t in trajs)
        assert all(t["end_reason"] in ("done", "max_turns", "repeated_action", "env_truncated") for t in trajs)
    n_replies = sum(len(json.loads(x)["steps"]) for d in runnable
                    for x in (tmp_path / f"{d.id}.jsonl").read_text().splitlines())
    assert stats["requests"] >= n_replies and stats["batches"] < stats["requests"]  # episodes batched over HTTP
