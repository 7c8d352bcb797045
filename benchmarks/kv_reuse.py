"""KV reuse in the ``hf:`` policy: db-v1 evaluation episodes/s with ``kv_reuse`` on and off, same model, same run.

Each mode evaluates the same db-v1 test tasks through the real evaluation path
(:func:`agenttuning.eval.agent.evaluate_agent`: the rollout engine, concurrent episodes batched by HFPolicy) with
SmolLM2-135M-Instruct, greedy. ``off`` is ``model.generate`` over the whole rendered conversation every turn;
``on`` starts each prompt from the longest stored KV prefix (the environment's shared context, the episode's
previous turn). Reported per mode: wall time, episodes/s, steps, prompt tokens and how many of them were served
from the KV store; then whether every trajectory's replies and actions are identical between the modes.
``ratio`` = episodes/s on / episodes/s off.

    python benchmarks/kv_reuse.py            # full: 20 tasks, concurrency 8, the environment's 10 turns
    python benchmarks/kv_reuse.py --quick    # < 1 minute: 2 tasks, 2 turns, short replies; last line is JSON

The model: ``--model`` (a folder or anything ``agenttuning.models.resolve_model`` takes), default the
``smollm2-135m-instruct`` alias, else ``/tmp/smol/hf``. ``--threads`` sets torch's CPU threads (default 1: on a
2-core machine shared with other jobs, more threads than free cores make every matrix multiply wait on busy
cores). ``--prefill batched`` runs a third mode, reuse with all suffixes prefilled in one padded forward.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agenttuning.eval.agent import evaluate_agent
from agenttuning.jsonl import read_records
from agenttuning.policies.hf import HFPolicy
from agenttuning.rollout.engine import EpisodeLimits
from agenttuning.schema import Trajectory

FALLBACK_MODEL = "/tmp/smol/hf"


def find_model(spec: str | None) -> str:
    """The model folder: ``spec`` through the resolver, else the smollm2 alias, else the fallback folder."""
    from agenttuning.models import resolve_model

    for candidate in [spec] if spec else ["smollm2-135m-instruct", FALLBACK_MODEL]:
        try:
            return resolve_model(candidate, progress=False)
        except Exception as e:  # noqa: BLE001 - try the next source
            if spec or not os.path.isdir(FALLBACK_MODEL):
                raise SystemExit(f"no model: {e}") from e
    return FALLBACK_MODEL


def run_mode(model: Any, tok: Any, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    policy = HFPolicy(
        model, tokenizer=tok, max_new_tokens=args.max_new_tokens, batch_size=args.concurrency,
        batch_wait_ms=args.batch_wait_ms, kv_reuse=mode != "off",
    )  # fmt: skip
    if mode == "on-batched":
        policy.kv_prefill = "batched"
    assert policy.kv_reuse == (mode != "off"), policy.kv_fallback_reason
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = evaluate_agent(
            policy, ["db"], held_in=None, out_dir=d, n=args.n, concurrency=args.concurrency,
            limits=EpisodeLimits(max_turns=args.max_turns, timeout_s=None),
        )  # fmt: skip
        wall = time.perf_counter() - t0
        trajs = {t.task.id: t for t in read_records(Path(d) / "db-v1.jsonl", Trajectory)}
    stats = dict(policy.stats)
    env = result.envs[0]
    return {
        "mode": mode,
        "episodes": len(trajs),
        "steps": sum(len(t.steps) for t in trajs.values()),
        "wall_s": wall,
        "eps_per_s": len(trajs) / wall,
        "prompt_tokens": stats["prompt_tokens"],
        "cached_tokens": stats["cached_tokens"],
        "completion_tokens": sum(t.usage.completion_tokens for t in trajs.values()),
        "batches": stats["batches"],
        "successes": env.successes,
        "replies": {k: [(s.reply, s.action) for s in t.steps] + [t.end_reason] for k, t in trajs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run that finishes in under a minute")
    ap.add_argument("--model", default=None, help="model folder or source (default: smollm2-135m-instruct)")
    ap.add_argument("-n", type=int, default=None, help="db-v1 test tasks (default: 2 quick, 20 full)")
    ap.add_argument("--concurrency", type=int, default=None, help="episodes in flight = batch size (2 / 8)")
    ap.add_argument("--max-turns", type=int, default=None, help="turn budget (2 quick; full: the env's 10)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="reply budget (24 quick, 256 full)")
    ap.add_argument("--batch-wait-ms", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see the docstring)")
    ap.add_argument("--prefill", choices=["rows", "batched", "both"], default="rows",
                    help="reuse mode(s) to run: per-request prefill, one padded prefill, or both")
    args = ap.parse_args()
    args.n = args.n or (2 if args.quick else 20)
    args.concurrency = args.concurrency or (2 if args.quick else 8)
    args.max_turns = args.max_turns or (2 if args.quick else None)
    args.max_new_tokens = args.max_new_tokens or (24 if args.quick else 256)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    folder = find_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    reuse_modes = {"rows": ["on"], "batched": ["on-batched"], "both": ["on", "on-batched"]}[args.prefill]
    runs = [run_mode(model, tok, mode, args) for mode in [*reuse_modes, "off"]]
    off = runs[-1]

    table = Table(title=f"KV reuse · db-v1 · {args.n} tasks · concurrency {args.concurrency} · "
                        f"{Path(folder).name} · {args.threads} thread(s)", header_style="bold")  # fmt: skip
    for col in ("kv_reuse", "episodes", "steps", "wall s", "episodes/s", "prompt tokens", "from cache",
                "completion tokens", "same replies as off"):  # fmt: skip
        table.add_column(col, justify="left" if col == "kv_reuse" else "right")
    for r in runs:
        same = "-" if r is off else str(r["replies"] == off["replies"])
        share = r["cached_tokens"] / r["prompt_tokens"] if r["prompt_tokens"] else 0.0
        table.add_row(r["mode"], str(r["episodes"]), str(r["steps"]), f"{r['wall_s']:.1f}", f"{r['eps_per_s']:.3f}",
                      f"{r['prompt_tokens']:,}", f"{r['cached_tokens']:,} ({share:.0%})",
                      f"{r['completion_tokens']:,}", same)  # fmt: skip
    Console(width=140).print(table)
    on = runs[0]
    print(json.dumps({
        "benchmark": "kv_reuse",
        "quick": args.quick,
        "model": Path(folder).name,
        "threads": args.threads,
        "episodes": args.n,
        "concurrency": args.concurrency,
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "steps": on["steps"],
        "episodes_per_s": {r["mode"]: round(r["eps_per_s"], 4) for r in runs},
        "wall_s": {r["mode"]: round(r["wall_s"], 1) for r in runs},
        "prompt_tokens": on["prompt_tokens"],
        "cached_tokens": {r["mode"]: r["cached_tokens"] for r in runs},
        "cached_share": round(on["cached_tokens"] / max(1, on["prompt_tokens"]), 4),
        "identical_trajectories": all(r["replies"] == off["replies"] for r in runs),
        "ratio": round(on["eps_per_s"] / off["eps_per_s"], 3),
        "goal_ratio": 2.0,
    }))


if __name__ == "__main__":
    main()
