"""Derive the ``os`` tasks (AgentTuning section 2.2, *task derivation*; AgentBench's operating-system task).

Every template (:mod:`.templates`, :mod:`.system_templates`) is drawn :data:`DRAWS` times, each time from a
:class:`random.Random` seeded by a SHA-256 of the template's name and the draw number, so the candidates are the
same on every machine. A candidate's split is decided by a SHA-256 of the template and the whole instance (its init
script and question): the same (template, parameters) instance always falls in the same split, so train and test
never share one. Selection then follows the rule every family shares
(:func:`agenttuning.envs.derivation.tasks_from_candidates`): per template at most :data:`CAP` tasks in each split,
in hash order, and no question text in both splits.

A task is either a question, graded by exact match of the stripped answer with :attr:`OsPayload.answer` (as
AgentBench's ``match``), or a change to the system, graded by the bash :attr:`OsPayload.check` script given the
agent's answer as ``$1`` and passing on exit status 0 (as AgentBench's ``check``). The tests run every test task,
and all training tasks in the slow suite, in the real sandbox: init, then the solution, then the grading, which must
pass; and init then a wrong answer (or no solution), which must fail.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from agenttuning.envs import derivation
from agenttuning.envs.os.system_templates import SYSTEM_TEMPLATES
from agenttuning.envs.os.templates import FILE_TEMPLATES, Candidate, Template
from agenttuning.schema import Task

ENV_ID = "os-v1"
TEMPLATES: tuple[Template, ...] = FILE_TEMPLATES + SYSTEM_TEMPLATES
DRAWS = 40  # candidates drawn per template
TEST_PERCENT = 25  # share of instances in the test split
CAP = {"train": 4, "test": 2}  # tasks kept per template and split


class OsPayload(BaseModel):
    """An ``os`` task: the script that builds its situation, the expert's commands, and how it is graded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str  # the template it was derived from, e.g. "log_level_count"
    init: str  # bash run in the fresh sandbox before the agent starts (files, permissions, processes, ...)
    solution: str  # bash the expert runs in the episode's shell; for a question it prints the answer
    answer: str | None = None  # a question's exact answer (compared after stripping both sides)
    check: str | None = None  # a change's bash check script: given the agent's answer as $1, exit 0 passes

    @model_validator(mode="after")
    def _one_way_to_grade(self) -> OsPayload:
        if (self.answer is None) == (self.check is None):
            raise ValueError("an os task needs exactly one of 'answer' (a question) and 'check' (a change)")
        return self


def candidates() -> list[Candidate]:
    """Every template's :data:`DRAWS` candidates, in template order (deterministic)."""
    out = []
    for template in TEMPLATES:
        for draw in range(DRAWS):
            c = template(random.Random(derivation.stable_int("os-v1", template.__name__, str(draw))))
            if c.template != template.__name__:
                raise ValueError(f"template {template.__name__} labels its tasks {c.template!r}")
            out.append(c)
    return out


def payload_of(c: Candidate) -> OsPayload:
    return OsPayload(kind=c.template, init=c.init, solution=c.solution, answer=c.answer, check=c.check)


def derive_os_tasks() -> dict[str, list[Task]]:
    """All ``os`` tasks of both splits, ids ``os-train-00000`` and ``os-test-00000`` onwards."""
    by_split: dict[str, list[Candidate]] = {"train": [], "test": []}
    for c in candidates():
        key = f"{c.template}\x1f{c.init}\x1f{c.question}"  # the whole (template, parameters) instance
        by_split[derivation.split_of("os-split", key, TEST_PERCENT)].append(c)

    def payload(c: Candidate) -> dict[str, Any]:
        return payload_of(c).model_dump()

    return derivation.tasks_from_candidates(by_split, family="os", env_id=ENV_ID, cap=CAP, payload=payload)


def expert_answer(payload: OsPayload) -> str:
    """The expert's final action once its solution has run: ``answer(<gold>)`` for a question, else ``finish``."""
    return f"answer({payload.answer})" if payload.answer is not None else "finish"


def wrong_answer(payload: OsPayload) -> str:
    """A final action that must score 0 right after init: a near miss for a question (one more for a number), and
    ``finish`` for a change (nothing was changed, so the check fails)."""
    if payload.answer is None:
        return "finish"
    gold = payload.answer.strip()
    if gold.lstrip("-").isdigit():
        return f"answer({int(gold) + 1})"
    return f"answer({gold}x)"
