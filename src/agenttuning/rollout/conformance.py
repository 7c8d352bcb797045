"""Conformance check for an environment family (run on every registered environment in CI).

It lives in ``rollout``, not ``envs``: it runs episodes through the engine and the baseline policies, which both
depend on ``envs``, so here no package imports another that imports it back.

It checks the contract (types, Gymnasium's terminated/truncated semantics, invalid actions as feedback), that tasks
and resets are deterministic and the splits disjoint, that every task's payload fits the environment's payload model
(the one its instances validate against at reset), that the expert solves every test task without a model (an
environment proves its own tasks before any model is blamed), and that a deliberately wrong answer scores 0.

Then the adversarial suite, which uses only the :class:`EnvDefinition` API so every environment inherits it: the
family's :meth:`~EnvDefinition.adversarial_actions` (generic garbage plus the family's own probes) are sent in an
episode, and every call must return within :data:`CALL_TIME_LIMIT_S` (a call that overruns is sent ``interrupt()``
and fails the check), return an observation of at most :data:`MAX_OBSERVATION_CHARS` characters, never raise, and
grow the process's memory by at most :data:`MAX_RSS_GROWTH_BYTES`; afterwards the same instance reset, and a fresh
one, show the task as before and the expert still solves it (nothing leaks into the next episode); and the episode
lifecycle holds (a step after the end or before any reset, a second reset, ``interrupt()`` at rest, closing twice).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agenttuning.envs.base import EnvDefinition, Environment, PayloadError, StepResult, parse_payload
from agenttuning.schema import Task, Turn, normalise_text

CALL_TIME_LIMIT_S = 5.0  # the longest any reset or step may take, whatever the action
MAX_OBSERVATION_CHARS = 100_000
MAX_RSS_GROWTH_BYTES = 256 << 20  # peak growth of the process's memory over the adversarial episode


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class CheckReport:
    env: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]


def _run(report: CheckReport, name: str, fn: Callable[[], str | None]) -> None:
    try:
        detail = fn() or ""
        report.results.append(CheckResult(name, True, detail))
    except Exception as e:  # a check that raises has failed; say why
        report.results.append(CheckResult(name, False, f"{type(e).__name__}: {e}"))


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def _short(action: str) -> str:
    return repr(action[:40]) + (f"... ({len(action):,} chars)" if len(action) > 40 else "")


def _timed(instance: Environment, what: str, fn: Callable[..., Any], *args: Any,
           limit_s: float = CALL_TIME_LIMIT_S) -> tuple[Any, float]:
    """``fn(*args)`` on a worker thread, waited for :data:`CALL_TIME_LIMIT_S`; an overrun is interrupted and fails.

    A thread, not a process, because the point is the environment's own bound: one that ignores ``interrupt()``
    leaves its daemon thread behind and the check says so."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["error"] = e

    start = time.monotonic()
    worker = threading.Thread(target=target, name="check-call", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        instance.interrupt()
        worker.join(limit_s)
        after = "it returned only after interrupt()" if not worker.is_alive() else "it ignored interrupt() too"
        raise AssertionError(f"{what} did not return within {limit_s:g} s ({after})")
    if "error" in box:
        e = box["error"]
        raise AssertionError(f"{what} raised {type(e).__name__}: {str(e)[:200]}")
    return box.get("value"), time.monotonic() - start


class _PeakRss:
    """Samples the process's resident memory on a thread while open; ``growth`` is the peak over the start."""

    def __init__(self, every_s: float = 0.005):
        import psutil

        self._process, self._every, self.growth = psutil.Process(), every_s, 0
        self._done = threading.Event()

    def __enter__(self) -> _PeakRss:
        self._start = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="check-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.growth = max(self.growth, self._process.memory_info().rss - self._start)
            if self._done.wait(self._every):
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _expert_reward(env: EnvDefinition, instance: Environment, task: Task) -> float:
    """Reset ``instance`` to ``task`` and play the expert to the end; the final reward."""
    from agenttuning.rollout.react import parse_reply

    history = [Turn(role="user", content=_timed(instance, "reset", instance.reset, task)[0])]
    for _ in range(env.max_turns):
        reply = env.expert(task, history)
        result, _ = _timed(instance, "step", instance.step, parse_reply(reply).action)
        history += [Turn(role="assistant", content=reply), Turn(role="user", content=result.observation)]
        if result.terminated or result.truncated:
            return float(result.reward)
    return 0.0


def check_env(env: EnvDefinition, *, max_tasks: int | None = None, concurrency: int = 4,
              call_limit_s: float = CALL_TIME_LIMIT_S, max_rss_growth: int = MAX_RSS_GROWTH_BYTES) -> CheckReport:
    """Run every conformance check; ``max_tasks`` limits the expert/wrong sweeps (None: the whole test split);
    ``call_limit_s`` and ``max_rss_growth`` are the adversarial suite's bounds."""
    from agenttuning.policies.baselines import ExpertPolicy, WrongPolicy
    from agenttuning.rollout.engine import EpisodeLimits, run_episode

    report = CheckReport(env.id)
    splits: dict[str, list[Task]] = {}

    def identity() -> str:
        _require(isinstance(env.version, int) and env.version >= 1, "version must be an int >= 1")
        _require(env.id == f"{env.name}-v{env.version}", f"id {env.id!r} is not name-vVERSION")
        _require(env.max_turns >= 1, "max_turns must be >= 1")
        return env.id

    def tasks() -> str:
        for split in ("train", "test"):
            a, b = env.tasks(split), env.tasks(split)  # type: ignore[arg-type]
            _require(len(a) > 0, f"the {split} split is empty")
            _require(a == b, f"tasks({split!r}) differs between two calls")
            _require(len({t.id for t in a}) == len(a), f"duplicate task ids in {split}")
            bad = [t.id for t in a if t.env != env.id or t.split != split]
            _require(not bad, f"tasks with wrong env/split fields: {bad[:3]}")
            splits[split] = a
        shared_ids = {t.id for t in splits["train"]} & {t.id for t in splits["test"]}
        _require(not shared_ids, f"ids in both splits: {sorted(shared_ids)[:3]}")
        train_texts = {normalise_text(t.instruction) for t in splits["train"]}
        shared = [t.id for t in splits["test"] if normalise_text(t.instruction) in train_texts]
        _require(not shared, f"test instructions also in train: {shared[:3]}")
        return f"{len(splits['train'])} train / {len(splits['test'])} test"

    def payloads() -> str:
        instance = env.make()  # the payload model is the instance's: what reset() validates against
        instance.close()
        model = getattr(instance, "payload_model", None)
        if model is None:
            return "not checked: the instance is not an EpisodeEnv and declares no payload model"
        bad = []
        for task in splits["train"] + splits["test"]:
            try:
                parse_payload(model, task)
            except PayloadError as e:
                bad.append(str(e))
        _require(not bad, f"{len(bad)} task payloads do not fit {model.__name__}: {bad[:3]}")
        return f"{len(splits['train']) + len(splits['test'])} tasks fit {model.__name__}"

    def context() -> str:
        turns = env.context()
        _require(turns and turns[0].role == "user", "the context must start with a user turn")
        for i, t in enumerate(turns):
            _require(t.role == ("user" if i % 2 == 0 else "assistant"), "context turns must alternate user/assistant")
            _require(t.role == "user" or t.loss is False, "context assistant turns must have loss=False")
        _require(len(turns) % 2 == 0, "the context must end on an assistant turn")
        return f"{len(turns)} turns, prompt hash {env.prompt_hash}"

    def reset_and_step() -> str:
        task = splits["test"][0]
        first, second = env.make(), env.make()
        try:
            o1, o2 = first.reset(task), second.reset(task)
            _require(isinstance(o1, str) and o1, "reset must return a non-empty string")
            _require(o1 == o2, "two resets of the same task gave different observations")
            _require(first.reset(task) == o1, "resetting an instance again gave a different observation")
            for garbage in ("", "definitely not an action", "\x00\n```"):
                r = first.step(garbage)
                _require(isinstance(r, StepResult), "step must return a StepResult")
                _require(isinstance(r.observation, str) and r.observation, "invalid action needs feedback text")
                _require(r.reward == 0 and not r.terminated, f"invalid action {garbage!r} must not end or score")
                _require(r.invalid is True, f"invalid action {garbage!r} must set invalid=True")
        finally:
            first.close()
            first.close()  # closing twice is allowed
            second.close()
        return "ok"

    def sweep(policy_factory: Callable[[], object], want_success: bool) -> str:
        tasks_ = splits["test"][:max_tasks] if max_tasks else splits["test"]
        policy = policy_factory()
        limits = EpisodeLimits(timeout_s=None)

        async def go() -> list:
            sem = asyncio.Semaphore(concurrency)

            async def one(t: Task):  # type: ignore[no-untyped-def]
                async with sem:
                    return await run_episode(env, t, policy, limits=limits)  # type: ignore[arg-type]

            return await asyncio.gather(*(one(t) for t in tasks_))

        trajs = asyncio.run(go())
        if want_success:
            bad = [f"{t.task.id} ({t.end_reason}, reward {t.reward})" for t in trajs if not (t.success and t.reward >= 1)]
            _require(not bad, f"expert failed {len(bad)}/{len(trajs)}: {bad[:3]}")
            _require(all(t.end_reason == "done" and t.steps[-1].terminated for t in trajs), "expert must terminate")
        else:
            bad = [t.task.id for t in trajs if t.success or t.reward != 0 or t.end_reason != "done"]
            _require(not bad, f"a wrong answer scored or did not terminate on {len(bad)} tasks: {bad[:3]}")
        return f"{len(trajs)} test tasks"

    used: list[Any] = []  # for the leak check: first observation and expert score before the probes, the instance

    def adversarial() -> str:
        task = splits["test"][0]
        actions = env.adversarial_actions(task)
        baseline = env.make()
        try:  # the first observation and the expert's score before any probe ran (the leak check compares)
            used.append(_timed(baseline, "reset", baseline.reset, task)[0])
            used.append(_expert_reward(env, baseline, task))
        finally:
            baseline.close()
        instance = env.make()
        used.append(instance)
        _timed(instance, "reset", instance.reset, task)
        slowest, slowest_action = 0.0, ""
        with _PeakRss() as rss:
            for action in actions:
                r, took = _timed(instance, f"step({_short(action)})", instance.step, action, limit_s=call_limit_s)
                _require(isinstance(r, StepResult), f"step({_short(action)}) did not return a StepResult")
                _require(isinstance(r.observation, str), f"step({_short(action)}) gave a non-string observation")
                _require(len(r.observation) <= MAX_OBSERVATION_CHARS,
                         f"step({_short(action)}) gave a {len(r.observation):,}-char observation "
                         f"(at most {MAX_OBSERVATION_CHARS:,})")
                if took > slowest:
                    slowest, slowest_action = took, _short(action)
                if r.terminated or r.truncated:
                    _timed(instance, "reset", instance.reset, task)
        _require(rss.growth <= max_rss_growth,
                 f"memory grew by {rss.growth >> 20} MiB over the adversarial actions "
                 f"(at most {max_rss_growth >> 20} MiB)")
        return (f"{len(actions)} actions; slowest {slowest:.2f} s ({slowest_action}); "
                f"peak memory +{rss.growth >> 20} MiB")

    def no_leaks() -> str:
        _require(len(used) == 3, "the adversarial check did not get as far as its probes")
        task, (want, before, instance) = splits["test"][0], used
        fresh = env.make()
        try:
            for name, episode in (("a fresh", fresh), ("the reset", instance)):
                _require(_timed(episode, "reset", episode.reset, task)[0] == want,
                         f"after the adversarial actions, {name} episode shows a different first observation")
                _require(_expert_reward(env, episode, task) == before,
                         f"after the adversarial actions, the expert scores differently in {name} episode")
        finally:
            fresh.close()
            instance.close()
        return f"task {task.id}: a fresh episode and the reset one are as before (expert scores {before:g})"

    def lifecycle() -> str:
        from agenttuning.rollout.react import parse_reply

        task = splits["test"][0]
        instance = env.make()
        try:
            try:  # a step before any reset: a clear error or an observation, never a hang or a crash
                _timed(instance, "step before reset", instance.step, "x")
            except AssertionError as e:
                _require("did not return" not in str(e), str(e))
            instance.interrupt()  # at rest: harmless
            first = _timed(instance, "reset", instance.reset, task)[0]
            _require(_timed(instance, "second reset", instance.reset, task)[0] == first, "reset twice differs")
            action = parse_reply(env.wrong_answer(task)).action
            for _ in range(env.max_turns):  # end the episode, however many turns its wrong answer takes
                result = _timed(instance, "step", instance.step, action)[0]
                if result.terminated or result.truncated:
                    break
            else:
                raise AssertionError(f"the episode did not end within max_turns={env.max_turns} steps")
            try:  # a step after the end
                _timed(instance, "step after the end", instance.step, action)
            except AssertionError as e:
                _require("did not return" not in str(e), str(e))
            instance.interrupt()
        finally:
            instance.close()
            instance.close()
        return "ok"

    _run(report, "identity", identity)
    _run(report, "tasks deterministic, splits disjoint", tasks)
    _run(report, "context well-formed", context)
    if "test" in splits:
        _run(report, "task payloads fit the payload model", payloads)
        _run(report, "reset deterministic, invalid actions are feedback", reset_and_step)
        _run(report, "expert solves every test task", lambda: sweep(lambda: ExpertPolicy(env), True))
        _run(report, "wrong answer scores 0", lambda: sweep(lambda: WrongPolicy(env), False))
        _run(report, "adversarial actions: bounded time, size and memory", adversarial)
        _run(report, "no state leaks between episodes", no_leaks)
        _run(report, "episode lifecycle: early and late steps, resets, interrupt, close", lifecycle)
    return report
