"""The ``instruct`` stage: self-instruct (AgentTuning section 2.1): a teacher writes new tasks; only verified ones count.

Story: show an OpenAI-compatible teacher the environment (description, schema, task format, a few seed tasks) and
ask for ``per_request`` tasks at a time until ``n`` have been asked for -> read each reply strictly and turn each
draft into a task by running its reference solution (the family's module, e.g. :mod:`agenttuning.envs.db.instruct`)
-> run the family's expert through the real environment on the task (it must score reward 1) and its wrong answer
(it must not) -> drop near-duplicates of the environment's own tasks, of tasks kept earlier in the run, and of any
test task (:class:`~agenttuning.data.decontam.ContaminationIndex`, plus the same gold solution) -> write
``tasks.jsonl`` (:class:`~agenttuning.schema.Task` records, ids ``<family>-instruct-<hash>``), ``rejections.jsonl``
(one line per rejection, with the reason), ``stats.json`` and ``manifest.json`` last (:mod:`.folder`).

Each draft is rejected for the first reason that applies, in the order of :func:`reasons` (reading, then the
family's own ``REASONS`` for running its reference solution, then grading and novelty); reply-level reasons count
whole replies, in :data:`REPLY_REASONS`. A family's module and its interface: :mod:`agenttuning.envs.instruct`. The teacher's text is data: bounded in size, parsed with
``json.loads`` only, and its SQL runs only under the environment's guards. Requests are sent ``concurrency`` at a
time; drafts are verified in request order, so the same replies give the same files.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
from collections import Counter
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.data.rows import write_json
from agenttuning.envs.base import EnvDefinition, get
from agenttuning.jsonl import write_atomic
from agenttuning.policies.base import PolicyError
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Task, Turn, normalise_text
from agenttuning.stages.folder import stage_folder
from agenttuning.stages.manifest import StageResult

if TYPE_CHECKING:  # the openai client is imported when a teacher is made, not when a config is read
    from agenttuning.policies.openai import OpenAIPolicy

__all__ = ["FAMILIES", "REPLY_REASONS", "InstructConfig", "InstructOutput", "reasons", "run"]

PathLike = str | os.PathLike[str]
TASKS, REJECTIONS, STATS = "tasks.jsonl", "rejections.jsonl", "stats.json"
#: family name -> its self-instruct module (the interface: :mod:`agenttuning.envs.instruct`)
FAMILIES = {"db": "agenttuning.envs.db.instruct", "os": "agenttuning.envs.os.instruct",
            "household": "agenttuning.envs.household.instruct"}
REPLY_REASONS = ("request_failed", "reply_too_long", "unparsable_reply")
READ_REASONS = ("excess", "unparsable", "too_long")  # reading the reply
GRADE_REASONS = ("expert_fails", "wrong_passes")  # the environment's own grading
NOVELTY_REASONS = ("test_contaminated", "duplicate")
_DETAIL_CHARS = 300


class InstructConfig(BaseModel):
    """Which environment, which teacher, how many tasks to ask for and how. The API key is not part of the config
    (it would land in the manifest): pass it to :func:`run` or set ``OPENAI_API_KEY``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = Field("db", description="The environment family (or its versioned id) to write tasks for.")
    teacher: str = Field(description="The teacher, 'openai:MODEL' (any OpenAI-compatible endpoint).")
    base_url: str | None = Field(None, description="The teacher's API root, e.g. http://127.0.0.1:8000/v1.")
    n: int = Field(100, ge=1, le=100_000, description="How many tasks to ask the teacher for in all.")
    per_request: int = Field(10, ge=1, le=50, description="Tasks asked for in one request.")
    seeds: int = Field(4, ge=0, le=20, description="Seed tasks (the environment's train tasks) shown per request.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="The teacher's sampling temperature.")
    max_tokens: int = Field(4096, ge=16, description="Longest reply, in tokens.")
    seed: int = Field(0, description="Picks each request's seed tasks; sent to the teacher as its sampling seed.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Seconds one request may take.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of a failed request.")

    @field_validator("teacher")
    @classmethod
    def _openai_teacher(cls, value: str) -> str:
        kind, _, model = value.partition(":")
        if kind != "openai" or not model:
            raise ValueError(f"teacher {value!r} must be 'openai:MODEL'")
        return value


class InstructOutput(StageResult):
    """What :func:`run` wrote and counted: asked, drafted, kept, and every rejection by reason."""

    env: str
    tasks: str = TASKS
    rejections: str = REJECTIONS
    stats: str = STATS
    requests: int
    asked: int
    drafts: int
    kept: int
    rejected: dict[str, int]
    rejected_replies: dict[str, int]


def reasons(family: ModuleType) -> tuple[str, ...]:
    """Every reason a draft can be rejected for, in the order they are checked: reading the reply, the family's
    own (running its reference solution), the environment's grading, novelty."""
    return READ_REASONS + tuple(family.REASONS) + GRADE_REASONS + NOVELTY_REASONS


def _family(definition: EnvDefinition) -> ModuleType:
    if definition.name not in FAMILIES:
        raise ValueError(f"instruct: environment {definition.name!r} has no self-instruct module "
                         f"(supported: {', '.join(sorted(FAMILIES))})")  # fmt: skip
    return importlib.import_module(FAMILIES[definition.name])


def _teacher(config: InstructConfig, api_key: str | None) -> OpenAIPolicy:
    from agenttuning.policies.openai import OpenAIPolicy

    model = config.teacher.partition(":")[2]  # 'openai:MODEL', checked by the config
    return OpenAIPolicy(model, base_url=config.base_url, api_key=api_key, temperature=config.temperature,
                        max_tokens=config.max_tokens, timeout=config.timeout, max_retries=config.max_retries,
                        seed=config.seed)  # fmt: skip


async def _ask_all(teacher: OpenAIPolicy, prompts: list[list[Turn]], concurrency: int, env_id: str,
                   seed: int | None = None) -> list[Any]:  # fmt: skip
    """Each prompt's reply text, or the PolicyError it ended in; in prompt order."""
    gate = asyncio.Semaphore(concurrency)

    async def ask(i: int, messages: list[Turn]) -> str | PolicyError:
        marker = Task(id=f"instruct-request-{i}", env=env_id, split="train", instruction="self-instruct request")
        async with gate:
            try:
                # each request samples with its own seed (config.seed + i): a family whose prompts are alike (household
                # shows the same example every time) would otherwise get the same reply to every request. act() reads
                # the seed before its first await, so setting it here, on the one event loop, is race-free.
                if seed is not None:
                    teacher.seed = seed + i
                return (await teacher.act(messages, task=marker)).text
            except PolicyError as e:
                return e

    try:
        return await asyncio.gather(*(ask(i, m) for i, m in enumerate(prompts)))
    finally:
        await teacher.aclose()


def _episode_reward(definition: EnvDefinition, task: Task, *, expert: bool) -> float:
    """The reward of one episode on ``task`` in the real environment: the expert's, or the wrong answer's."""
    env = definition.make()
    try:
        history = [Turn(role="user", content=env.reset(task))]
        for _ in range(definition.max_turns):
            reply = definition.expert(task, history) if expert else definition.wrong_answer(task)
            result = env.step(parse_reply(reply).action)
            history += [Turn(role="assistant", content=reply), Turn(role="user", content=result.observation)]
            if result.terminated or result.truncated:
                return result.reward
        return 0.0
    finally:
        env.close()


class _Novelty:
    """Near-duplicate and contamination checks: the test index, the environment's own tasks, and those kept."""

    def __init__(self, definition: EnvDefinition, family: ModuleType, index: ContaminationIndex):
        self.family, self.index = family, index
        train = definition.tasks("train")
        self.existing = ContaminationIndex.build(train)
        self.test_keys = {family.solution_key(t): t.id for t in definition.tasks("test")}
        self.keys = {family.solution_key(t): t.id for t in train}
        self.texts: dict[str, str] = {}

    def problem(self, task: Task) -> tuple[str, str] | None:
        hit = self.index.match(task.id, [task.instruction])
        if hit is not None:
            return "test_contaminated", f"{hit[0]}: {hit[1]}"
        key = self.family.solution_key(task)
        if key in self.test_keys:
            return "test_contaminated", f"same solution as {self.test_keys[key]}"
        hit = self.existing.match(task.id, [task.instruction])
        if hit is not None:
            return "duplicate", f"{hit[0]}: {hit[1]}"
        text = normalise_text(task.instruction)
        if text in self.texts:
            return "duplicate", f"same instruction as {self.texts[text]}"
        if key in self.keys:
            return "duplicate", f"same solution as {self.keys[key]}"
        return None

    def keep(self, task: Task) -> None:
        self.texts[normalise_text(task.instruction)] = task.id
        self.keys[self.family.solution_key(task)] = task.id


def _verify(definition: EnvDefinition, family: ModuleType, novelty: _Novelty, draft: Any) -> Task | tuple[str, str]:
    """The task a draft makes, or (reason, detail): solution, then the environment's grading, then novelty."""
    made = family.draft_task(definition, draft)
    if not isinstance(made, Task):
        return made.reason, made.detail
    try:
        if _episode_reward(definition, made, expert=True) < 1.0:
            return "expert_fails", "the reference solution does not score 1 in the environment"
    except Exception as e:  # noqa: BLE001 - a task the environment cannot even start (a flaky init) is not kept
        return "expert_fails", f"the environment failed on the task: {type(e).__name__}: {e}"
    try:
        if _episode_reward(definition, made, expert=False) > 0.0:
            return "wrong_passes", "the wrong answer scores"
    except Exception as e:  # noqa: BLE001 - likewise: never end the run
        return "expert_fails", f"the environment failed on the task: {type(e).__name__}: {e}"
    return novelty.problem(made) or made


def run(config: InstructConfig, out: PathLike, *, index: ContaminationIndex | None = None, api_key: str | None = None,
        overwrite: bool = False) -> InstructOutput:  # fmt: skip
    """Ask the teacher for ``config.n`` tasks, keep the verified ones, write them to the folder ``out``.

    ``index`` (the test side) defaults to :meth:`ContaminationIndex.from_registry`: every registered test split.
    """
    definition = get(config.env)
    family = _family(definition)
    teacher = _teacher(config, api_key)
    train = sorted(definition.tasks("train"), key=lambda t: t.id)
    sizes = [min(config.per_request, config.n - start) for start in range(0, config.n, config.per_request)]
    prompts = []
    for i, k in enumerate(sizes):
        seeds = random.Random(f"{config.seed}:{i}").sample(train, min(config.seeds, len(train)))
        prompts.append(family.instruct_prompt(definition, seeds, k))
    with stage_folder(out, stage="instruct", inputs=[], overwrite=overwrite) as w:
        replies = asyncio.run(_ask_all(teacher, prompts, config.concurrency, definition.id, seed=config.seed))
        novelty = _Novelty(definition, family, index if index is not None else ContaminationIndex.from_registry())
        kept: list[Task] = []
        rejections: list[dict[str, Any]] = []
        rejected: Counter[str] = Counter()
        rejected_replies: Counter[str] = Counter()
        drafts = 0
        for i, (reply, k) in enumerate(zip(replies, sizes, strict=True)):
            if isinstance(reply, PolicyError):
                rejected_replies["request_failed"] += 1
                rejections.append({"request": i, "reason": "request_failed", "detail": str(reply)[:_DETAIL_CHARS]})
                continue
            items, whole = family.read_drafts(reply, k)
            if whole is not None:
                rejected_replies[whole.reason] += 1
                rejections.append({"request": i, "reason": whole.reason, "detail": whole.detail,
                                   "reply": reply[:_DETAIL_CHARS]})  # fmt: skip
                continue
            for j, item in enumerate(items):
                drafts += 1
                failed = isinstance(item, family.Rejected)
                verdict = (item.reason, item.detail) if failed else _verify(definition, family, novelty, item)
                if isinstance(verdict, Task):
                    novelty.keep(verdict)
                    kept.append(verdict)
                    continue
                rejected[verdict[0]] += 1
                draft = None if failed else item.model_dump(mode="json")
                rejections.append({"request": i, "item": j, "reason": verdict[0], "detail": verdict[1][:_DETAIL_CHARS],
                                   "draft": draft})  # fmt: skip
        write_atomic(w.path / TASKS, kept)
        write_atomic(w.path / REJECTIONS, rejections)
        order = {r: n for n, r in enumerate(reasons(family) + REPLY_REASONS)}
        output = InstructOutput(
            env=definition.id, requests=len(sizes), asked=config.n, drafts=drafts, kept=len(kept),
            rejected=dict(sorted(rejected.items(), key=lambda kv: order.get(kv[0], len(order)))),
            rejected_replies=dict(sorted(rejected_replies.items(), key=lambda kv: order.get(kv[0], len(order)))),
        )  # fmt: skip
        usage = dict(teacher.stats)
        write_json(w.path / STATS, {**output.model_dump(mode="json"), "teacher": config.teacher, "usage": usage,
                                    "keep_ratio": round(len(kept) / drafts, 4) if drafts else 0.0})  # fmt: skip
        w.finish(config=config, inputs={"teacher": config.teacher, "base_url": config.base_url}, result=output)
    return output

