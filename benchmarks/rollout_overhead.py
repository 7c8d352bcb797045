"""Rollout engine overhead: episodes/s and the engine's own time per step, with the expert policy.

The engine's overhead is the time a run spends neither inside the environment (make/reset/step/close) nor waiting
for the policy: prompt building, parsing, thread hand-offs, the fsync'd append of each trajectory, bookkeeping.
At concurrency 1 it is ``(wall - env time - policy time) / steps``. The peer is the loop a user would write by
hand (reset, ask the expert, parse, step; no threads, no output file): ``ratio`` = engine episodes/s at the highest
concurrency / hand-written loop episodes/s, in the same run.

    python benchmarks/rollout_overhead.py            # full: the whole train split
    python benchmarks/rollout_overhead.py --quick    # < 1 minute; last line is JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agenttuning.envs.base import get
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import EpisodeLimits, rollout
from agenttuning.rollout.react import history, parse_reply
from agenttuning.schema import Step


class LatentExpert(ExpertPolicy):
    """The expert behind a simulated network round trip, as a remote model API would be."""

    def __init__(self, env, latency_s: float):  # type: ignore[no-untyped-def]
        super().__init__(env)
        self.latency_s = latency_s

    async def act(self, messages, *, task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.latency_s)
        return await super().act(messages, task=task)


def plain_loop(env, tasks) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """The hand-written baseline: one episode after another, expert replies parsed and stepped."""
    t0 = time.perf_counter()
    steps = 0
    for task in tasks:
        inst = env.make()
        obs = inst.reset(task)
        done_steps = []
        for _ in range(env.max_turns):
            reply = env.expert(task, history(done_steps, obs))
            p = parse_reply(reply)
            r = inst.step(p.action)
            done_steps.append(Step(thought=p.thought, action=p.action, observation=r.observation))
            steps += 1
            if r.terminated or r.truncated:
                break
        inst.close()
    return time.perf_counter() - t0, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="db")
    ap.add_argument("--quick", action="store_true", help="a small run that finishes in well under a minute")
    ap.add_argument("-n", type=int, default=None, help="tasks per run (default: 200 quick, whole train split full)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--latency-ms", type=float, default=20.0,
                    help="also run the expert behind this simulated API latency (0: skip)")
    args = ap.parse_args()

    env = get(args.env)
    tasks = env.tasks("train")
    n = args.n or (200 if args.quick else len(tasks))
    tasks = tasks[:n]
    env.make().close()  # build caches (e.g. the database) before timing

    rows = []
    base_wall, base_steps = plain_loop(env, tasks)
    rows.append({"runner": "hand-written loop", "concurrency": 1, "episodes": n, "steps": base_steps,
                 "wall_s": base_wall, "eps_per_s": n / base_wall, "overhead_ms_per_step": None})
    for c in args.concurrency:
        with tempfile.TemporaryDirectory() as d:
            s = rollout(env, tasks, ExpertPolicy(env), Path(d) / "out.jsonl", concurrency=c,
                        limits=EpisodeLimits(timeout_s=None))
        inside = s.env_time_s + s.policy_time_s
        # at concurrency > 1 env and policy time overlap, so only c=1 gives a clean wall-clock split
        overhead = (s.wall_time_s - inside) / s.steps * 1e3 if c == 1 else None
        per_episode = sum(t.wall_time_s - t.env_time_s - t.policy_time_s for t in s.trajectories) / s.steps * 1e3
        assert s.successes == n, f"the expert failed {n - s.successes} tasks"
        rows.append({"runner": "agenttuning engine", "concurrency": c, "episodes": n, "steps": s.steps,
                     "wall_s": s.wall_time_s, "eps_per_s": n / s.wall_time_s, "overhead_ms_per_step": overhead,
                     "in_episode_overhead_ms_per_step": per_episode})

    latency_rows = []
    if args.latency_ms > 0:
        lat_tasks = tasks[: min(n, 100)]
        for c in args.concurrency:
            with tempfile.TemporaryDirectory() as d:
                s = rollout(env, lat_tasks, LatentExpert(env, args.latency_ms / 1e3), Path(d) / "out.jsonl",
                            concurrency=c, limits=EpisodeLimits(timeout_s=None))
            latency_rows.append({"concurrency": c, "episodes": len(lat_tasks), "eps_per_s": s.finished / s.wall_time_s})

    table = Table(title=f"rollout overhead · {env.id} · expert · {n} tasks", header_style="bold")
    for col in ("runner", "concurrency", "steps", "wall s", "episodes/s", "overhead ms/step", "in-episode ms/step"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    for r in rows:
        ov = r["overhead_ms_per_step"]
        ie = r.get("in_episode_overhead_ms_per_step")
        table.add_row(r["runner"], str(r["concurrency"]), str(r["steps"]), f"{r['wall_s']:.2f}",
                      f"{r['eps_per_s']:.1f}", "-" if ov is None else f"{ov:.3f}", "-" if ie is None else f"{ie:.3f}")
    Console(width=120).print(table)
    if latency_rows:
        lt = Table(title=f"the same with {args.latency_ms:g} ms simulated API latency per reply", header_style="bold")
        for col in ("concurrency", "episodes", "episodes/s", "speed-up vs concurrency 1"):
            lt.add_column(col, justify="right")
        for r in latency_rows:
            lt.add_row(str(r["concurrency"]), str(r["episodes"]), f"{r['eps_per_s']:.1f}",
                       f"{r['eps_per_s'] / latency_rows[0]['eps_per_s']:.2f}x")
        Console(width=120).print(lt)
    engine = [r for r in rows if r["runner"] != "hand-written loop"]
    c1 = next((r for r in engine if r["concurrency"] == 1), None)
    best = max(engine, key=lambda r: r["eps_per_s"])
    print(json.dumps({
        "benchmark": "rollout_overhead",
        "env": env.id,
        "episodes": n,
        "overhead_ms_per_step": None if c1 is None else round(c1["overhead_ms_per_step"], 4),
        "episodes_per_s": {str(r["concurrency"]): round(r["eps_per_s"], 2) for r in engine},
        "baseline_episodes_per_s": round(rows[0]["eps_per_s"], 2),
        "ratio": round(best["eps_per_s"] / rows[0]["eps_per_s"], 3),
        "goal_overhead_ms_per_step": 1.0,
        "latency_ms": args.latency_ms,
        "latency_episodes_per_s": {str(r["concurrency"]): round(r["eps_per_s"], 2) for r in latency_rows},
    }))


if __name__ == "__main__":
    main()
