"""The rollout engine: many ReAct episodes at once, each written the moment it finishes, resumable after a kill.

Design:

- asyncio drives up to ``concurrency`` episodes; policies are async (HTTP calls, a batching local model) while
  environments are blocking and run on a thread pool of the same size, one environment instance per episode.
  Nothing heavy runs on the event loop: a long reply is parsed on the pool, and a reply is cut at
  ``max_reply_chars`` (recorded in the step's ``reply_note``), so one episode's reply never stalls the others.
- An environment is never closed under a running call (SQLite closed under a running statement crashes the
  process): when an episode ends while its environment is inside a call (a timeout), the engine calls the
  environment's thread-safe ``interrupt()`` and the worker thread closes it as soon as the call returns.
- Every finished trajectory, failed ones included, is appended to the output JSONL as one line, flushed and
  fsync'd (:class:`~agenttuning.jsonl.AppendWriter`). A SIGKILL can tear at most the last line, which a resumed run
  cuts before appending; ``resume`` skips task ids already in the file, so no trajectory is lost or duplicated.
  The output is locked for the run: a second process on the same file fails at once
  (:class:`~agenttuning.jsonl.LockedError`). Model text is recorded whatever it holds (a lone UTF-16 surrogate
  becomes U+FFFD, noted); a trajectory that still cannot be serialised is logged and skipped, the others are
  written, and the run then fails with :class:`TrajectoryWriteError` naming it.
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
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agenttuning.envs.base import EnvDefinition, Environment
from agenttuning.jsonl import AppendWriter, read_records, repair_tail, utf8_safe
from agenttuning.policies.base import Policy, PolicyError
from agenttuning.rollout.react import Parsed, ParseError, messages_for, parse_reply, step_from_reply
from agenttuning.schema import EndReason, Step, Task, Trajectory, Usage

T = TypeVar("T")
log = logging.getLogger(__name__)

# replies longer than this are parsed on the pool, not the loop (parsing is linear; this keeps the hot path cheap)
PARSE_INLINE_CHARS = 4096


class TrajectoryWriteError(ValueError):
    """Some finished trajectories could not be written (the others were); a resumed run retries them."""


@dataclass(frozen=True)
class EpisodeLimits:
    """When the engine stops an episode that the environment has not ended."""

    max_turns: int | None = None  # None: the environment's own budget
    max_context_tokens: int | None = None  # None: no budget beyond the policy's own
    max_repeats: int = 3  # the same action this many times in a row ends the episode as a failure
    timeout_s: float | None = 600.0  # wall clock per episode
    max_reply_chars: int = 65536  # a longer reply is cut to this (noted in the step): bounds parse and memory


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


class _EnvSlot:
    """One episode's environment, whose calls run on pool threads, serialised with its teardown.

    ``close_soon`` may come from the event loop at any moment (an episode timeout). Closing under a running call
    is unsafe, so then the running call is interrupted and the worker thread closes the environment as soon as the
    call returns; with no call running, the close is queued on the pool. Either way nothing waits for it.
    """

    def __init__(self) -> None:
        self.instance: Environment | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on this (worker) thread; close the environment afterwards if that was asked meanwhile."""
        with self._lock:
            if self._closing:  # a cancelled call that started anyway: the environment is being closed
                raise RuntimeError("the episode is over")
            self._busy = True
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy = False
                close_now = self._closing
            if close_now:
                self.close()

    def close_soon(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor | None) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            busy = self._busy
        if not busy:
            if self.instance is None:  # never made (or make() failed): nothing to close
                return
            # not awaited: the trajectory need not wait for the teardown (the pool finishes it before shutdown)
            loop.run_in_executor(executor, self.close)
            return
        interrupt = getattr(self.instance, "interrupt", None)  # thread-safe by the Environment contract
        if interrupt is not None:
            try:
                interrupt()
            except Exception:  # best effort: the call still ends within the environment's own budgets
                pass

    def close(self) -> None:
        if self.instance is not None:
            _close_quietly(self.instance)


def _clean_reply(text: str, max_chars: int) -> tuple[str, str | None]:
    """The reply as the engine acts on it: cut to ``max_chars`` and UTF-8-safe; and a note if that changed it."""
    notes = []
    if len(text) > max_chars:
        notes.append(f"cut from {len(text)} to {max_chars} characters")
        text = text[:max_chars]
    clean = utf8_safe(text)
    if clean is not text:
        notes.append("lone UTF-16 surrogates replaced by U+FFFD")
    return clean, "; ".join(notes) or None


def _parse(text: str) -> Parsed | ParseError:
    try:
        return parse_reply(text)
    except ParseError as e:
        return e


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
    slot = _EnvSlot()

    def timed(fn: Callable[..., T], *args: object) -> T:
        # measured inside the worker thread: the hand-off to and from the pool is the engine's cost, not the env's
        t0 = time.perf_counter()
        try:
            return slot.call(fn, *args)
        finally:
            ep.env_time += time.perf_counter() - t0

    async def call_env(fn: Callable[..., T], *args: object) -> T:
        return await loop.run_in_executor(executor, timed, fn, *args)

    def open_episode() -> str:
        slot.instance = env.make()
        return slot.instance.reset(task)

    async def body() -> tuple[EndReason, float, bool, str | None]:
        ep.initial_observation = await call_env(open_episode)
        instance = slot.instance
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
            text, note = _clean_reply(reply.text, limits.max_reply_chars)
            # linear, but a long reply is still worth milliseconds: off the loop, where other episodes wait
            if len(text) <= PARSE_INLINE_CHARS:
                parsed = _parse(text)
            else:
                parsed = await loop.run_in_executor(executor, _parse, text)
            if isinstance(parsed, ParseError):
                # counts against the turn budget, as a real environment would
                obs = env.invalid_action(str(parsed))
                ep.steps.append(step_from_reply(text, observation=obs, parsed=parsed, reply_note=note))
                continue
            result = await call_env(instance.step, parsed.action)
            ep.steps.append(
                step_from_reply(
                    text,
                    observation=result.observation,
                    parsed=parsed,
                    reward=float(result.reward),
                    terminated=bool(result.terminated),
                    truncated=bool(result.truncated),
                    reply_note=note,
                )
            )
            total_reward += float(result.reward)
            if result.terminated:
                success = total_reward >= 1.0 if result.success is None else bool(result.success)
                return "done", total_reward, success, None
            if result.truncated:
                return "env_truncated", total_reward, False, None
            # a loop: the same action *and* the same observation (an agent walking "go east" through three rooms
            # is moving; one resending a query and getting the same rows is stuck)
            recent = [(s.action, s.observation) for s in ep.steps[-limits.max_repeats :] if not s.parse_error]
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
        slot.close_soon(loop, executor)

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

    Without ``resume`` an existing non-empty output file is an error (nothing is overwritten or mixed). The file is
    locked for the whole run, before it is read for ``resume``: a second process on it gets
    :class:`~agenttuning.jsonl.LockedError` instead of writing the same tasks again.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    out = Path(out)
    selected = select_tasks(tasks, shard=shard)
    with AppendWriter(out, repair=False) as w:
        done: set[str] = set()
        if out.stat().st_size > 0:
            if not resume:
                raise FileExistsError(
                    f"{out} already has trajectories: pass resume to continue it, or choose a new file"
                )
            done = finished_ids(out)  # cuts a torn last line first; safe, as the lock is ours
        todo = [t for t in selected if t.id not in done]
        summary = RolloutSummary(total=len(selected), skipped=len(selected) - len(todo))
        if on_start is not None:
            on_start(len(selected), summary.skipped)
        start = time.perf_counter()
        unwritten = await _run_all(env, todo, policy, w, summary, concurrency, limits, on_result)
    summary.wall_time_s = time.perf_counter() - start
    if unwritten:
        raise TrajectoryWriteError(
            f"{len(unwritten)} of {summary.finished} trajectories could not be written to {out} (the others were; "
            f"run again with resume to retry them): {'; '.join(unwritten[:3])}"
        )
    return summary


async def _run_all(env: EnvDefinition, todo: list[Task], policy: Policy, w: AppendWriter, summary: RolloutSummary,
                   concurrency: int, limits: EpisodeLimits, on_result: OnResult | None) -> list[str]:  # fmt: skip
    """Run ``todo`` with ``concurrency`` workers, writing each trajectory; returns what could not be written."""
    queue: asyncio.Queue[Task] = asyncio.Queue()
    for t in todo:
        queue.put_nowait(t)
    unwritten: list[str] = []

    def write(traj: Trajectory) -> None:
        try:
            w.write(traj)
        except OSError:
            raise  # the output itself failed (disk full, I/O error): every later write would fail too
        except Exception as e:  # this record only (e.g. an environment's payload JSON cannot hold): say so, go on
            unwritten.append(f"{traj.task.id}: {type(e).__name__}: {e}")
            log.error("trajectory %s could not be written to %s: %s: %s", traj.task.id, w.path, type(e).__name__, e)

    # env calls on a pool; writes on one thread of their own, so an fsync never holds up the next episode
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="env") as executor, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="writer"
    ) as write_pool:
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Future[None]] = []

        async def worker() -> None:
            while True:
                try:
                    task = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                traj = await run_episode(env, task, policy, limits=limits, executor=executor)
                writes.append(loop.run_in_executor(write_pool, write, traj))
                summary.add(traj)
                if on_result is not None:
                    on_result(traj, summary)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(todo))))))
        await asyncio.gather(*writes)  # every trajectory is on disk before the run reports done
    return unwritten


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
