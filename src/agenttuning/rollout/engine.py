"""The rollout engine: many ReAct episodes at once, each written the moment it finishes, resumable after a kill.

Design:

- asyncio drives up to ``concurrency`` episodes; policies are async (HTTP calls, a batching local model) while
  environments are blocking and run on a thread pool of the same size, one environment instance per episode.
- Every finished trajectory, failed ones included, is appended to the output JSONL as one line, flushed and
  fsync'd (:class:`~agenttuning.jsonl.AppendWriter`). A SIGKILL can tear at most the last line, which a resumed run
  cuts before appending; ``resume`` skips task ids already in the file, so no trajectory is lost or duplicated.
- ``shard=(k, n)`` keeps the tasks whose stable id hash falls in shard k of n: machines that split one task list
  this way cover it exactly, whatever order or subset each one was given.
- An episode ends when the environment terminates or truncates it, or the engine stops it: turn budget,
  context budget, the same action ``max_repeats`` times in a row (AgentTuning counts three as failure),
  per-episode timeout, a policy that fails for good, or an environment error. The reason is recorded; the run
  itself never crashes because one episode failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agenttuning.envs.base import EnvDefinition, Environment
from agenttuning.jsonl import AppendWriter, read_records, repair_tail
from agenttuning.policies.base import Policy, PolicyError
from agenttuning.rollout.react import ParseError, messages_for, parse_reply
from agenttuning.schema import EndReason, Step, Task, Trajectory, Usage, render_reply

T = TypeVar("T")


@dataclass(frozen=True)
class EpisodeLimits:
    """When the engine stops an episode that the environment has not ended."""

    max_turns: int | None = None  # None: the environment's own budget
    max_context_tokens: int | None = None  # None: no budget beyond the policy's own
    max_repeats: int = 3  # the same action this many times in a row ends the episode as a failure
    timeout_s: float | None = 600.0  # wall clock per episode


@dataclass
class RolloutSummary:
    """What a rollout did; ``trajectories`` holds the ones finished in this run."""

    total: int = 0  # tasks in scope (after sharding)
    skipped: int = 0  # already in the output file (resume)
    finished: int = 0
    successes: int = 0
    reward_sum: float = 0.0
    end_reasons: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    wall_time_s: float = 0.0
    env_time_s: float = 0.0
    policy_time_s: float = 0.0
    steps: int = 0
    # not in repr: asyncio reprs a finished task's result, which would format every trajectory
    trajectories: list[Trajectory] = field(default_factory=list, repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / self.finished if self.finished else 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.finished if self.finished else 0.0

    def add(self, traj: Trajectory) -> None:
        self.finished += 1
        self.successes += traj.success
        self.reward_sum += traj.reward
        self.end_reasons[traj.end_reason] += 1
        self.usage = self.usage + traj.usage
        self.steps += len(traj.steps)
        self.env_time_s += traj.env_time_s
        self.policy_time_s += traj.policy_time_s
        self.trajectories.append(traj)


# ------------------------------------------------------------------------------------------------------------
# Task selection


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1-based) -> ``(K, N)``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like K/N (e.g. 1/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"shard {text!r}: need 1 <= K <= N")
    return k, n


def in_shard(task_id: str, k: int, n: int) -> bool:
    """Stable assignment of a task id to one of n shards (sha256, never Python's salted hash())."""
    h = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big")
    return h % n == k - 1


def select_tasks(tasks: Sequence[Task], *, shard: tuple[int, int] | None = None) -> list[Task]:
    """The tasks of one shard, in the given order; duplicates of an id are an error."""
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise ValueError(f"task id {t.id!r} appears twice in the task list")
        seen.add(t.id)
    if shard is None:
        return list(tasks)
    return [t for t in tasks if in_shard(t.id, *shard)]


def finished_ids(path: str | Path) -> set[str]:
    """Task ids already recorded in an output file (after cutting a torn last line)."""
    p = Path(path)
    if not p.exists():
        return set()
    repair_tail(p)
    return {t.task.id for t in read_records(p, Trajectory)}


# ------------------------------------------------------------------------------------------------------------
# One episode


def _close_quietly(instance: Environment) -> None:
    try:
        instance.close()
    except Exception:  # closing is best effort; the trajectory is what matters
        pass


class _Episode:
    """Mutable state of one running episode, so a timeout can still record what happened."""

    def __init__(self, task: Task):
        self.task = task
        self.initial_observation = ""
        self.steps: list[Step] = []
        self.usage = Usage()
        self.env_time = 0.0
        self.policy_time = 0.0


async def run_episode(
    env: EnvDefinition,
    task: Task,
    policy: Policy,
    *,
    limits: EpisodeLimits = EpisodeLimits(),
    executor: ThreadPoolExecutor | None = None,
) -> Trajectory:
    """Run one ReAct episode and return its trajectory; never raises for a failing policy or environment."""
    loop = asyncio.get_running_loop()
    ep = _Episode(task)
    context = env.context()
    start = time.perf_counter()
    instance: Environment | None = None

    def timed(fn: Callable[..., T], *args: object) -> T:
        # measured inside the worker thread: the hand-off to and from the pool is the engine's cost, not the env's
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            ep.env_time += time.perf_counter() - t0

    async def call_env(fn: Callable[..., T], *args: object) -> T:
        return await loop.run_in_executor(executor, timed, fn, *args)

    def open_episode() -> str:
        nonlocal instance
        instance = env.make()
        return instance.reset(task)

    async def body() -> tuple[EndReason, float, bool, str | None]:
        ep.initial_observation = await call_env(open_episode)
        assert instance is not None
        max_turns = limits.max_turns or env.max_turns
        total_reward = 0.0
        for _ in range(max_turns):
            messages = messages_for(context, ep.initial_observation, ep.steps)
            if limits.max_context_tokens and policy.count_tokens(messages) > limits.max_context_tokens:
                return "context_length", total_reward, False, None
            t0 = time.perf_counter()
            try:
                reply = await policy.act(messages, task=task)
            except PolicyError as e:
                return "policy_error", total_reward, False, str(e)
            finally:
                ep.policy_time += time.perf_counter() - t0
            ep.usage = ep.usage + reply.usage
            text = reply.text
            try:
                parsed = parse_reply(text)
            except ParseError as e:
                # counts against the turn budget, as a real environment would
                obs = env.invalid_action(str(e))
                ep.steps.append(Step(thought=text, action="", observation=obs, raw=text, parse_error=str(e)))
                continue
            result = await call_env(instance.step, parsed.action)
            raw = None if render_reply(parsed.thought, parsed.action) == text else text
            ep.steps.append(
                Step(
                    thought=parsed.thought,
                    action=parsed.action,
                    observation=result.observation,
                    reward=float(result.reward),
                    terminated=bool(result.terminated),
                    truncated=bool(result.truncated),
                    raw=raw,
                )
            )
            total_reward += float(result.reward)
            if result.terminated:
                info = result.info
                success = bool(info.get("success", total_reward >= 1.0))
                return "done", total_reward, success, None
            if result.truncated:
                return "env_truncated", total_reward, False, None
            recent = [s.action for s in ep.steps[-limits.max_repeats :] if not s.parse_error]
            if limits.max_repeats > 0 and len(recent) == limits.max_repeats and len(set(recent)) == 1:
                return "repeated_action", total_reward, False, None
        return "max_turns", total_reward, False, None

    try:
        # asyncio.timeout, not wait_for: no extra task per episode (measurably cheaper on the hot path)
        async with asyncio.timeout(limits.timeout_s):
            reason, reward, success, error = await body()
    except TimeoutError:
        reason, reward, success = "timeout", sum(s.reward for s in ep.steps), False
        error = f"episode exceeded {limits.timeout_s:g}s"
    except Exception as e:  # an environment bug must not take the whole run down
        reason, reward, success = "env_error", sum(s.reward for s in ep.steps), False
        error = f"{type(e).__name__}: {e}"
    finally:
        if instance is not None:
            # not awaited: the trajectory need not wait for the teardown (the pool finishes it before shutdown)
            loop.run_in_executor(executor, _close_quietly, instance)

    steps = ep.steps
    if reason not in ("done", "env_truncated") and steps and not steps[-1].truncated:
        steps = steps[:-1] + [steps[-1].model_copy(update={"truncated": True})]
    return Trajectory(
        task=task,
        policy=policy.name,
        context=context,
        initial_observation=ep.initial_observation,
        steps=steps,
        reward=reward,
        success=success,
        end_reason=reason,
        usage=ep.usage,
        wall_time_s=time.perf_counter() - start,
        env_time_s=ep.env_time,
        policy_time_s=ep.policy_time,
        error=error,
    )


# ------------------------------------------------------------------------------------------------------------
# Many episodes


OnResult = Callable[[Trajectory, RolloutSummary], None]


async def rollout_async(
    env: EnvDefinition,
    tasks: Sequence[Task],
    policy: Policy,
    out: str | Path,
    *,
    concurrency: int = 8,
    limits: EpisodeLimits = EpisodeLimits(),
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_result: OnResult | None = None,
) -> RolloutSummary:
    """Run every selected task once and append its trajectory to ``out`` as soon as it finishes.

    Without ``resume`` an existing non-empty output file is an error (nothing is overwritten or mixed).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    out = Path(out)
    selected = select_tasks(tasks, shard=shard)
    done: set[str] = set()
    if out.exists() and out.stat().st_size > 0:
        if not resume:
            raise FileExistsError(f"{out} already has trajectories: pass resume to continue it, or choose a new file")
        done = finished_ids(out)
    todo = [t for t in selected if t.id not in done]
    summary = RolloutSummary(total=len(selected), skipped=len(selected) - len(todo))
    if on_start is not None:
        on_start(len(selected), summary.skipped)
    start = time.perf_counter()
    queue: asyncio.Queue[Task] = asyncio.Queue()
    for t in todo:
        queue.put_nowait(t)

    # env calls on a pool; writes on one thread of their own, so an fsync never holds up the next episode
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="env") as executor, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="writer"
    ) as write_pool, AppendWriter(out) as w:
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Future[None]] = []

        async def worker() -> None:
            while True:
                try:
                    task = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                traj = await run_episode(env, task, policy, limits=limits, executor=executor)
                writes.append(loop.run_in_executor(write_pool, w.write, traj))
                summary.add(traj)
                if on_result is not None:
                    on_result(traj, summary)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(todo))))))
        await asyncio.gather(*writes)  # every trajectory is on disk before the run reports done
    summary.wall_time_s = time.perf_counter() - start
    return summary


def rollout(
    env: EnvDefinition, tasks: Sequence[Task], policy: Policy, out: str | Path, **options: Any
) -> RolloutSummary:
    """Synchronous :func:`rollout_async`; closes the policy at the end."""

    async def main() -> RolloutSummary:
        try:
            return await rollout_async(env, tasks, policy, out, **options)
        finally:
            await policy.aclose()

    return asyncio.run(main())
