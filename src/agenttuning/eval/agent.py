"""Agent evaluation: a policy on the test split of every selected environment, held-in and held-out (AgentTuning §3.1).

The paper evaluates AgentLM on the six *held-in* tasks whose training splits produced AgentInstruct and on *held-out*
tasks it never trained on, to tell in-domain fitting from generalisation. Here:

* **held-in** = the environment families that have training trajectories in the run: pass them as ``held_in``
  (family names or versioned ids), or a path to the AgentInstruct file/directory the model was trained on
  (:func:`families_in` reads the families from it). **held-out** = every other family. An environment that
  declares ``held_out = True`` is held-out whatever the training data holds. ``held_in=None`` means no training
  data is known (a base model): every environment is then held-out.
* ``envs`` picks the environments: names (``db``), versioned ids (``db-v1``; another version than the registered
  one is an error) and the group words ``held-in``, ``held-out``, ``all`` (None = ``all``), in any mix.
* Each environment's **test split** (the first ``n`` tasks, if given) runs through the rollout engine
  (:func:`agenttuning.rollout.engine.rollout_async`) with trajectories appended to ``<out_dir>/<env_id>.jsonl``.
  With ``resume`` (the default) a second call runs only the tasks not yet in that file, and refuses a file whose
  trajectories came from another policy or another prompt (``prompt_hash``): their scores would not be
  comparable. Scores are computed from the file, so a resumed run reports every selected task.
* Per environment: tasks, success rate with its Wilson 95% interval, mean reward with a seeded bootstrap 95%
  interval (:mod:`agenttuning.eval.stats`), and the end reasons (``done``, ``max_turns``, ``policy_error``...,
  so an outage is visible rather than silently scored as failure).
* ``<out_dir>/results.json`` (:class:`AgentEvalResult`, written last, atomically) records each environment's
  versioned id and ``prompt_hash`` next to its scores, so results of different runs are compared only where the
  environment and its prompts were the same. :mod:`agenttuning.eval.score` turns several models' results into the
  paper's normalised overall scores.

Example::

    result = evaluate_agent("hf:out/agentlm", ["all"], held_in="data/agentinstruct", out_dir="eval/agentlm")
    rich.print(result.table())
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.example import family_of
from agenttuning.envs import base
from agenttuning.envs.base import EnvDefinition
from agenttuning.eval.stats import BOOTSTRAP_RESAMPLES, bootstrap_mean_interval, wilson_interval
from agenttuning.jsonl import write_text_atomic
from agenttuning.jsonl import read_records, repair_tail
from agenttuning.policies.base import Policy
from agenttuning.policies.specs import PolicySpec
from agenttuning.rollout.engine import EpisodeLimits, rollout_async
from agenttuning.schema import Trajectory, Turn

if TYPE_CHECKING:
    from rich.table import Table

    from agenttuning.rollout.engine import OnResult

_log = logging.getLogger(__name__)

__all__ = [
    "GROUP_WORDS",
    "AgentEvalResult",
    "EnvResult",
    "context_hash",
    "evaluate_agent",
    "families_in",
    "group_of",
    "load_agent_result",
    "select_envs",
]

Group = Literal["held-in", "held-out"]
GROUP_WORDS = ("held-in", "held-out", "all")
RESULTS_FILE = "results.json"
RESULTS_VERSION = 1


# ------------------------------------------------------------------------------------------------------------
# Records


class EnvResult(BaseModel):
    """One environment's scores on its test split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = Field(description="Family name, e.g. 'db'.")
    env_id: str = Field(description="Versioned id, e.g. 'db-v1': compare scores only for equal ids.")
    prompt_hash: str = Field(description="EnvDefinition.prompt_hash: compare scores only for equal prompt hashes.")
    group: Group = Field(description="'held-in' (its family has training trajectories) or 'held-out'.")
    n: int = Field(description="Test tasks evaluated (all with a trajectory).")
    successes: int = Field(description="Tasks solved.")
    success_rate: float = Field(description="successes / n (0 when n == 0).")
    success_ci: tuple[float, float] = Field(description="Wilson 95% interval of the success rate.")
    mean_reward: float = Field(description="Mean episode reward over the n tasks.")
    reward_ci: tuple[float, float] = Field(description="Percentile-bootstrap 95% interval of the mean reward.")
    end_reasons: dict[str, int] = Field(description="How many episodes ended for each reason.")
    ran_now: int = Field(description="Episodes run by this call (the rest were already in the file).")
    trajectories: str = Field(description="The trajectory JSONL, relative to the results directory.")


class AgentEvalResult(BaseModel):
    """What :func:`evaluate_agent` returns and writes as ``results.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    results_version: int = Field(default=RESULTS_VERSION, description="Version of this record layout.")
    policy: str = Field(description="The policy spec evaluated (e.g. 'hf:out/agentlm').")
    policy_name: str = Field(description="The policy's own name, as recorded in its trajectories.")
    held_in: list[str] | None = Field(description="Families counted held-in (None: no training data given).")
    n: int | None = Field(description="Tasks per environment asked for (None: the whole test split).")
    limits: dict[str, Any] = Field(description="The episode limits (EpisodeLimits) the rollouts ran under.")
    bootstrap: dict[str, Any] = Field(description="Bootstrap settings of the reward intervals (resamples, seed).")
    created: str = Field(description="When this file was written (UTC, ISO 8601).")
    wall_time_s: float = Field(description="Seconds this call took.")
    envs: list[EnvResult] = Field(description="One entry per environment, in evaluation order.")

    def group(self, name: Group) -> list[EnvResult]:
        """The environments of one group."""
        return [e for e in self.envs if e.group == name]

    def scores(self, metric: Literal["success_rate", "mean_reward"] = "mean_reward") -> dict[str, float]:
        """``{env_id: score}``, the input of :func:`agenttuning.eval.score.overall`."""
        return {e.env_id: getattr(e, metric) for e in self.envs}

    def groups(self) -> dict[str, list[str]]:
        """``{"held-in": [env ids], "held-out": [env ids]}`` (groups without environments left out)."""
        out: dict[str, list[str]] = {}
        for e in self.envs:
            out.setdefault(e.group, []).append(e.env_id)
        return out

    def table(self, title: str | None = None) -> Table:
        """A rich table: one row per environment, held-in first, with intervals and end reasons."""
        from rich.table import Table

        t = Table(title=title or f"agent evaluation · {self.policy}", header_style="bold")
        for col, justify in (("group", "left"), ("env", "left"), ("prompt", "left"), ("n", "right"),
                             ("success (95% CI)", "right"), ("mean reward (95% CI)", "right"),
                             ("ended", "left")):  # fmt: skip
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for e in sorted(self.envs, key=lambda e: (e.group != "held-in", e.env_id)):
            lo, hi = e.success_ci
            rlo, rhi = e.reward_ci
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(e.end_reasons.items(), key=lambda kv: -kv[1]))
            t.add_row(e.group, e.env_id, e.prompt_hash[:8], str(e.n),
                      f"{e.success_rate:.1%} [{lo:.1%}, {hi:.1%}]",
                      f"{e.mean_reward:.3f} [{rlo:.3f}, {rhi:.3f}]", reasons)  # fmt: skip
        for group, (success, reward, k) in self.group_means().items():
            t.add_row(group, f"overall ({k} environment{'s' * (k != 1)})", "", "", f"{success:.1%}", f"{reward:.3f}", "",
                      style="bold")  # fmt: skip
        if self.envs:
            t.caption = ("overall: the unweighted mean over the group's environments (the paper's normalised overall "
                         "score compares several models: agenttuning score)")  # fmt: skip
        return t

    def group_means(self) -> dict[str, tuple[float, float, int]]:
        """``{group: (mean success rate, mean reward, environments)}``, each an unweighted mean over the group's
        environments (held-in first), so a large test split does not outweigh a small one."""
        out = {}
        for group in ("held-in", "held-out"):
            envs = self.group(group)  # type: ignore[arg-type]
            if envs:
                out[group] = (sum(e.success_rate for e in envs) / len(envs),
                              sum(e.mean_reward for e in envs) / len(envs), len(envs))  # fmt: skip
        return out


def load_agent_result(path: str | os.PathLike[str]) -> AgentEvalResult:
    """Read a ``results.json`` (or the directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    return AgentEvalResult.model_validate_json(p.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------------------
# Held-in / held-out and environment selection


def families_in(path: str | os.PathLike[str]) -> set[str]:
    """Families with at least one trajectory in an AgentInstruct file or directory (``<family>.jsonl`` etc.).

    These are the held-in families of a model trained on that data (AgentTuning §3.1).
    """
    from agenttuning.data.formats import read_agentinstruct

    return {ex.family for ex in read_agentinstruct(path).examples}


def _held_in_set(held_in: Iterable[str] | str | os.PathLike[str] | None) -> set[str] | None:
    if held_in is None:
        return None
    if isinstance(held_in, str | os.PathLike):
        return families_in(held_in)
    return {family_of(h) for h in held_in}


def group_of(definition: EnvDefinition, held_in: set[str] | None) -> Group:
    """``held-in`` iff the family is among ``held_in`` and the environment does not declare itself held-out."""
    if definition.held_out or not held_in:
        return "held-out"
    return "held-in" if definition.name in held_in else "held-out"


def select_envs(envs: Sequence[str] | None, held_in: set[str] | None) -> list[EnvDefinition]:
    """Resolve names, versioned ids and group words to registered environments (first mention's order, no repeats).

    ``held-in`` with no training families given is an error (it would silently select nothing). A group word
    leaves out a family that cannot run here (:meth:`EnvDefinition.unavailable_reason`: a tool, a package or a data
    folder missing), with a warning naming why; a family named outright is always selected.
    """
    words = list(envs) if envs else ["all"]
    chosen: dict[str, EnvDefinition] = {}
    for w in words:
        if w in GROUP_WORDS:
            if w == "held-in" and not held_in:
                raise ValueError("'held-in' needs the training families: pass held_in (families or a data path)")
            for d in base.available():
                if w != "all" and group_of(d, held_in) != w:
                    continue
                reason = d.unavailable_reason()
                if reason is not None:
                    _log.warning("%r leaves out %s: %s", w, d.id, reason)
                    continue
                chosen.setdefault(d.name, d)
        else:
            d = base.get(w)
            chosen.setdefault(d.name, d)
    if not chosen:
        raise ValueError(f"no environment selected by {words}")
    return list(chosen.values())


# ------------------------------------------------------------------------------------------------------------
# Running and scoring


def context_hash(context: Sequence[Turn]) -> str:
    """The hash :attr:`EnvDefinition.prompt_hash` computes, of a trajectory's recorded context."""
    blob = json.dumps([t.model_dump() for t in context], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _existing(path: Path) -> list[Trajectory]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    repair_tail(path)
    return read_records(path, Trajectory)


def _check_comparable(path: Path, trajs: Sequence[Trajectory], policy_name: str, definition: EnvDefinition) -> None:
    """Refuse to resume a file whose episodes a different policy or prompt produced."""
    others = sorted({t.policy for t in trajs} - {policy_name})
    if others:
        raise ValueError(
            f"{path} holds trajectories of policy {others[0]!r}, not {policy_name!r}: "
            "use another out_dir for another model"
        )
    hashes = {context_hash(t.context) for t in trajs} - {definition.prompt_hash}
    if hashes:
        raise ValueError(
            f"{path} holds trajectories with prompt hash {min(hashes)}, but {definition.id} now has "
            f"{definition.prompt_hash}: its prompts changed (bump the environment's version), use another out_dir"
        )


def _score(
    definition: EnvDefinition,
    group: Group,
    task_ids: Sequence[str],
    trajs: Sequence[Trajectory],
    ran_now: int,
    seed: int,
) -> EnvResult:
    by_id = {t.task.id: t for t in trajs}  # the engine never writes an id twice; the last line wins if one did
    picked = [by_id[i] for i in task_ids if i in by_id]
    missing = len(task_ids) - len(picked)
    if missing:
        raise RuntimeError(f"{definition.id}: {missing} selected tasks have no trajectory after the rollout")
    n = len(picked)
    successes = sum(t.success for t in picked)
    rewards = [float(t.reward) for t in picked]
    mean_reward = sum(rewards) / n if n else 0.0
    reward_ci = bootstrap_mean_interval(rewards, seed=seed, key=definition.id) if n else (0.0, 0.0)
    return EnvResult(
        env=definition.name,
        env_id=definition.id,
        prompt_hash=definition.prompt_hash,
        group=group,
        n=n,
        successes=successes,
        success_rate=successes / n if n else 0.0,
        success_ci=wilson_interval(successes, n),
        mean_reward=mean_reward,
        reward_ci=reward_ci,
        end_reasons=dict(Counter(t.end_reason for t in picked)),
        ran_now=ran_now,
        trajectories=f"{definition.id}.jsonl",
    )


PolicyFactory = Callable[[EnvDefinition], Policy]


def evaluate_agent(
    policy_spec: str | PolicySpec | Policy,
    envs: Sequence[str] | None = None,
    *,
    held_in: Iterable[str] | str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    n: int | None = None,
    concurrency: int = 8,
    limits: EpisodeLimits | None = None,
    policy_options: dict[str, Any] | None = None,
    resume: bool = True,
    seed: int = 0,
    on_start: Callable[[EnvDefinition, int, int], None] | None = None,
    on_result: OnResult | None = None,
) -> AgentEvalResult:
    """Run ``policy_spec`` on the test split of each selected environment and score it (see the module docstring).

    Args:
        policy_spec: a spec for :func:`agenttuning.policies.make_policy` (``hf:PATH``, ``openai:MODEL``,
            ``expert``, ``wrong``, ``noisy:P``; a string or a :data:`~agenttuning.policies.specs.PolicySpec`,
            checked before anything is written), or a ready :class:`Policy` (used for every environment and
            closed at the end). A model policy (``hf:``, ``openai:``) is built once and shared by all
            environments; an environment-bound one (``expert``...) is built per environment.
        envs: names, versioned ids, ``held-in`` / ``held-out`` / ``all``; None = all registered.
        held_in: training families (names or ids), a path to the AgentInstruct data trained on, or None.
        out_dir: where ``<env_id>.jsonl`` trajectories and ``results.json`` go.
        n: evaluate only the first ``n`` test tasks of each environment.
        concurrency, limits: passed to the rollout engine (``limits`` None = :class:`EpisodeLimits` defaults).
        policy_options: keyword options for ``make_policy`` (``max_new_tokens``, ``base_url``...).
        resume: continue existing trajectory files (skip finished tasks); without it an existing file is an error.
        seed: seed of the bootstrap reward intervals.
        on_start, on_result: progress hooks; ``on_start(env, total, skipped)`` before each environment's rollout.
    """
    from agenttuning.policies import make_policy, parse_policy_spec

    start = time.perf_counter()
    spec = None if isinstance(policy_spec, Policy) else parse_policy_spec(policy_spec)
    families = _held_in_set(held_in)
    definitions = select_envs(envs, families)
    limits = limits or EpisodeLimits()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # results.json exists only after a call that finished: never a stale one beside newer trajectories
    (out / RESULTS_FILE).unlink(missing_ok=True)
    options = dict(policy_options or {})

    shared: Policy | None = None
    if isinstance(policy_spec, Policy):
        shared = policy_spec
    elif spec is not None and not spec.needs_env:
        shared = make_policy(spec, **options)
    spec_text = policy_spec.name if spec is None else str(spec)

    async def run_all() -> tuple[list[EnvResult], str]:
        results: list[EnvResult] = []
        name = shared.name if shared is not None else ""
        try:
            for d in definitions:
                policy = shared if shared is not None else make_policy(spec, env=d, **options)  # type: ignore[arg-type]
                name = policy.name
                path = out / f"{d.id}.jsonl"
                tasks = d.tasks("test")[:n]
                before = _existing(path)
                if before and resume:
                    _check_comparable(path, before, policy.name, d)
                try:
                    summary = await rollout_async(
                        d, tasks, policy, path, concurrency=concurrency, limits=limits, resume=resume,
                        on_start=(lambda total, skipped, d=d: on_start(d, total, skipped)) if on_start else None,
                        on_result=on_result,
                    )  # fmt: skip
                finally:
                    if policy is not shared:
                        await policy.aclose()
                group = group_of(d, families)
                results.append(_score(d, group, [t.id for t in tasks], _existing(path), summary.finished, seed))
        finally:
            if shared is not None:
                await shared.aclose()
        return results, name

    env_results, policy_name = asyncio.run(run_all())
    result = AgentEvalResult(
        policy=spec_text,
        policy_name=policy_name,
        held_in=sorted(families) if families is not None else None,
        n=n,
        limits=dataclasses.asdict(limits),
        bootstrap={"method": "percentile", "resamples": BOOTSTRAP_RESAMPLES, "seed": seed, "key": "env_id"},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_time_s=time.perf_counter() - start,
        envs=env_results,
    )
    write_text_atomic(out / RESULTS_FILE, result.model_dump_json(indent=2) + "\n")
    return result
