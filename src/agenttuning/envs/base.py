"""The environment contract: what every environment provides, and the registry that finds them.

An *environment family* (:class:`EnvDefinition`) owns its tasks, prompts, expert and grader; an *environment
instance* (:class:`Environment`) runs one episode at a time with Gymnasium's semantics: ``reset(task)`` returns the
first observation, ``step(action)`` returns a :class:`StepResult` in which ``terminated`` means the task ended (an
answer was given, the goal reached or failed) and ``truncated`` means the episode was stopped from outside the task
(a step budget), and ``close()`` frees resources. Instances are created per episode and used from one thread at a
time; the one call another thread may make is ``interrupt()``, which makes a running ``reset``/``step`` return
promptly. The owner closes an instance only after any running call has returned: a runner that gives up on a step
calls ``interrupt()``, waits for the step to return, then calls ``close()`` (closing a resource under a running call,
such as a SQLite connection, can crash the whole process).

Versioned ids (``db-v1``): any change to prompts, tasks or scoring bumps the version, so scores stay comparable.
Third-party environments register through the entry-point group ``agenttuning.envs``: the entry point names an
:class:`EnvDefinition` instance or a zero-argument callable returning one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, Literal

from agenttuning.schema import Task, Turn

Split = Literal["train", "test"]
ENTRY_POINT_GROUP = "agenttuning.envs"


@dataclass(frozen=True)
class StepResult:
    """What ``Environment.step`` returns (Gymnasium's five-tuple, named)."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def truncate_at_budget(result: StepResult, turns: int, max_turns: int) -> StepResult:
    """The step that spends the turn budget without ending the task is *truncated* (Gymnasium), and fails."""
    if result.terminated or turns < max_turns:
        return result
    info = {**result.info, "success": False}
    return StepResult(result.observation, 0.0, terminated=False, truncated=True, info=info)


class TaskCache:
    """A family's tasks, derived once per process on first use (thread-safe); ``get`` returns a fresh list."""

    def __init__(self, derive: Callable[[], Mapping[str, list[Task]]]):
        self._derive = derive
        self._lock = threading.Lock()
        self._tasks: Mapping[str, list[Task]] | None = None

    def get(self, split: str) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
        with self._lock:
            if self._tasks is None:
                self._tasks = self._derive()
        return list(self._tasks[split])


class Environment(ABC):
    """One running episode's world. Create one per episode; not shared between threads."""

    @abstractmethod
    def reset(self, task: Task) -> str:
        """Start ``task`` from a fresh state and return the first observation (the task as the agent sees it)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply an action (the text after ``Action:``) and return the result.

        An action the environment cannot parse is not an error: it returns the invalid-action feedback as the
        observation with reward 0 and ``info["invalid"] = True``.
        """

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """Make a running ``reset``/``step`` return promptly; safe to call from any thread, at any time, repeatedly.

        An environment whose calls can run long (a query, a subprocess) stops the work and returns its usual
        feedback for a stopped action; the default does nothing, for environments whose every call is short.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources. Safe to call more than once; called by the owner after any running call has returned."""

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnvDefinition(ABC):
    """An environment family: identity, tasks, prompts, expert, and a factory for instances."""

    name: str  # family name, e.g. "db"
    version: int  # bump on any change to prompts, tasks or scoring
    description: str = ""
    max_turns: int = 10  # the family's default turn budget for an episode
    held_out: bool = False  # declare the family held-out for evaluation, whatever the training data holds

    @property
    def id(self) -> str:
        """Versioned id, e.g. ``db-v1``."""
        return f"{self.name}-v{self.version}"

    # --- tasks ---------------------------------------------------------------------------------------------
    @abstractmethod
    def tasks(self, split: Split) -> list[Task]:
        """All tasks of a split, in a deterministic order (the same list on every call and machine)."""

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def system_prompt(self) -> str:
        """The instructions, including the action format (sent as the first user turn, as in AgentInstruct)."""

    @property
    def one_shot(self) -> list[Turn]:
        """An optional in-context example: alternating user / assistant turns (never trained)."""
        return []

    def context(self) -> list[Turn]:
        """The in-context prefix every episode starts with: instructions, 'Ok.', then the one-shot example."""
        turns = [Turn(role="user", content=self.system_prompt), Turn(role="assistant", content="Ok.", loss=False)]
        turns += [t if t.role == "user" else t.model_copy(update={"loss": False}) for t in self.one_shot]
        return turns

    def invalid_action(self, reason: str) -> str:
        """Feedback observation for a reply with no parsable action."""
        return f"Invalid action: {reason}. Reply with 'Thought: ...' and then 'Action: ...' in the required format."

    def adversarial_actions(self, task: Task) -> list[str]:
        """Actions a hostile model might send in an episode of ``task``, for the conformance check's adversarial
        suite (see :mod:`agenttuning.envs.check`): every one must come back as an observation of bounded size within
        a few seconds, use bounded memory and leave no trace in the next episode. The default is generic garbage
        (huge, NUL, lone surrogates, control characters, deep nesting, many lines); a family adds its own probes of
        what its actions can do (``super().adversarial_actions(task) + [...]``)."""
        return generic_adversarial_actions()

    @cached_property
    def prompt_hash(self) -> str:
        """Hash of everything the agent is shown before the task: changes when prompts change."""
        blob = json.dumps([t.model_dump() for t in self.context()], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # --- episodes ------------------------------------------------------------------------------------------
    @abstractmethod
    def make(self) -> Environment:
        """A fresh environment instance for one episode."""

    @abstractmethod
    def expert(self, task: Task, history: list[Turn]) -> str:
        """The oracle's next reply (``Thought: ... Action: ...``) given the episode so far, without any model.

        ``history`` holds the turns after the context: the task observation, then replies and observations.
        """

    @abstractmethod
    def wrong_answer(self, task: Task) -> str:
        """A well-formed reply that ends the task with a deliberately wrong answer (must score 0)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def generic_adversarial_actions() -> list[str]:
    """Garbage any environment must survive: the default of :meth:`EnvDefinition.adversarial_actions`."""
    return [
        "x" * (1 << 20),  # 1 MB without a space
        "Action: " + "word " * 200_000,  # 1 MB of words
        "nul \x00 byte \x00" * 10,
        "lone surrogates \ud800 and \udfff",
        "".join(map(chr, range(1, 32))) * 100 + "\x7f\x85\u2028\u2029\ufeff",
        "(" * 100_000 + ")" * 100_000,
        "[{" * 50_000 + "}]" * 50_000,
        "\n".join(["- * # ` > | _ ~ ["] * 50_000),  # many lines of markdown-ish characters
        "Final Answer: " + "[" * 10_000 + "]" * 10_000,
    ]


# ------------------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, EnvDefinition] = {}
_entry_points_loaded = False
_ID = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)(?:-v(?P<version>\d+))?$")


def register(definition: EnvDefinition) -> EnvDefinition:
    """Add an environment family to the registry (idempotent for the same id)."""
    if not _ID.match(definition.name) or "-" in definition.name:
        raise ValueError(f"environment name {definition.name!r} must be lower_snake_case")
    existing = _REGISTRY.get(definition.name)
    if existing is not None and existing.id != definition.id:
        raise ValueError(f"environment {definition.name!r} already registered as {existing.id}, not {definition.id}")
    _REGISTRY[definition.name] = definition
    return definition


def _load_builtin() -> None:
    from agenttuning.envs import db, kg

    register(db.definition())
    register(kg.definition())


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    _load_builtin()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        definition = obj() if callable(obj) and not isinstance(obj, EnvDefinition) else obj
        if not isinstance(definition, EnvDefinition):
            raise TypeError(f"entry point {ep.name} = {ep.value} did not give an EnvDefinition")
        register(definition)


def available() -> list[EnvDefinition]:
    """Every registered environment family, sorted by name."""
    _load_entry_points()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get(env_id: str) -> EnvDefinition:
    """Look up ``name`` or ``name-vN``; asking for a version other than the registered one is an error."""
    _load_entry_points()
    m = _ID.match(env_id)
    if not m or m["name"] not in _REGISTRY:
        names = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown environment {env_id!r} (registered: {names})")
    d = _REGISTRY[m["name"]]
    if m["version"] is not None and int(m["version"]) != d.version:
        raise KeyError(f"environment {env_id!r} is not available: the registered version is {d.id}")
    return d
