"""Conformance check for an environment family (run on every registered environment in CI).

It checks the contract (types, Gymnasium's terminated/truncated semantics, invalid actions as feedback), that tasks
and resets are deterministic and the splits disjoint, that the expert solves every test task without a model (an
environment proves its own tasks before any model is blamed), and that a deliberately wrong answer scores 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from agenttuning.envs.base import EnvDefinition, StepResult
from agenttuning.schema import Task, normalise_text


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


def check_env(env: EnvDefinition, *, max_tasks: int | None = None, concurrency: int = 4) -> CheckReport:
    """Run every conformance check; ``max_tasks`` limits the expert/wrong sweeps (None: the whole test split)."""
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
                _require(r.info.get("invalid") is True, f"invalid action {garbage!r} must set info['invalid']")
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

    _run(report, "identity", identity)
    _run(report, "tasks deterministic, splits disjoint", tasks)
    _run(report, "context well-formed", context)
    if "test" in splits:
        _run(report, "reset deterministic, invalid actions are feedback", reset_and_step)
        _run(report, "expert solves every test task", lambda: sweep(lambda: ExpertPolicy(env), True))
        _run(report, "wrong answer scores 0", lambda: sweep(lambda: WrongPolicy(env), False))
    return report
