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
A family's instance usually subclasses :class:`EpisodeEnv`, which owns the episode's bookkeeping (reset before step,
the typed payload, the turn budget, the invalid-action and final results, close never under a running call), so the
family writes only its own ``start`` (fresh state for a task) and ``act`` (one action). A family's tasks carry its own
data in ``Task.payload``, a JSON object on the wire; the family declares a pydantic *payload model*
(``class MyEnv(EpisodeEnv[MyPayload])``) and the base validates each task's payload into it once, at reset, so the
family reads typed fields and a malformed task fails with its id (:class:`PayloadError`). The definition owns the
task cache (:meth:`EnvDefinition.tasks` derives once) and the factory (:meth:`EnvDefinition.make` builds its
``env_class``). Every environment, the built-in ones included, registers through the entry-point group
``agenttuning.envs`` (see ``pyproject.toml``): the entry point names an :class:`EnvDefinition` instance or a
zero-argument callable returning one. This module imports no environment.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from agenttuning.schema import Task, Turn

Split = Literal["train", "test"]
ENTRY_POINT_GROUP = "agenttuning.envs"
PayloadT = TypeVar("PayloadT", bound=BaseModel)


@dataclass(frozen=True)
class StepResult:
    """What ``Environment.step`` returns (Gymnasium's five-tuple, named), with the two outcomes every reader needs.

    ``success``: on the step that ends the task, whether it was solved (None: not said, and the engine counts a total
    reward of at least 1 as success); a truncated episode fails. ``invalid``: the action could not be run and the
    observation is the invalid-action feedback. ``info`` holds anything else the family wants to record.
    """

    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    success: bool | None = None
    invalid: bool = False


class PayloadError(ValueError):
    """A task's payload does not fit its environment's payload model (the message names the task)."""


def parse_payload(model: type[PayloadT], task: Task) -> PayloadT:
    """``task.payload`` (a JSON object on the wire) validated into ``model``; :class:`PayloadError` naming the task
    and every field that does not fit, so a malformed task file is found by its id rather than by a ``KeyError``
    deep inside an episode."""
    try:
        return model.model_validate(task.payload)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(payload)'}: {err['msg']}" for err in e.errors())
        raise PayloadError(
            f"task {task.id} ({task.env}): its payload does not fit {model.__name__}: {problems}") from None


class Environment(ABC):
    """One running episode's world. Create one per episode; not shared between threads."""

    @abstractmethod
    def reset(self, task: Task) -> str:
        """Start ``task`` from a fresh state and return the first observation (the task as the agent sees it)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply an action (the text after ``Action:``) and return the result.

        An action the environment cannot parse is not an error: it returns the invalid-action feedback as the
        observation with reward 0 and ``invalid=True``.
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


FINAL_OBSERVATION = "Answer received; the task is over."


class EpisodeEnv(Environment, Generic[PayloadT]):
    """The base of an environment instance: owns the episode's bookkeeping, so a family writes only its own actions.

    In the spirit of Gymnasium's ``OrderEnforcing`` and ``TimeLimit`` wrappers, it owns:

    - the task check and reset before step: ``reset(task)`` refuses a task of another family, frees the previous
      episode (:meth:`release`) and calls the family's :meth:`start`; ``step`` before ``reset`` or after the end
      raises ``RuntimeError``;
    - the typed payload: a family declares its pydantic payload model as the generic parameter
      (``class DbEnv(EpisodeEnv[DbPayload])``, kept in :attr:`payload_model`); ``reset`` validates the task's payload
      into it once (a payload that does not fit raises :class:`PayloadError` naming the task, before anything
      changes) and hands it to :meth:`start`; :attr:`payload` holds it for the episode;
    - the turn counter and the budget: every action, valid or not, uses a turn (:attr:`turns`); the step that spends
      :attr:`max_turns` without ending the task comes back ``truncated`` with reward 0 and ``success=False``;
    - the stripped action: :meth:`act` gets the text with surrounding whitespace removed;
    - the results: :meth:`invalid` (the family's invalid-action feedback, ``invalid=True``, reward 0, the reason in
      ``info["reason"]``) and :meth:`final` (the task ended: reward, ``success``, the final observation);
    - closing: ``close()`` is idempotent and never runs under a running ``reset``/``step`` (a ``_busy`` lock): from
      another thread it calls :meth:`interrupt` and waits for the call to return, then calls :meth:`release`.

    A family implements :meth:`start` and :meth:`act`, and :meth:`release` and :meth:`interrupt` if it holds
    resources or runs long calls. ``self.task`` is the running task.
    """

    payload_model: type[BaseModel]  # the family's payload model: set from the generic parameter

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Read the payload model from ``EpisodeEnv[Model]`` among the class's bases (unless the class sets
        :attr:`payload_model` itself); a subclass of a family's environment inherits it."""
        super().__init_subclass__(**kwargs)
        if "payload_model" in vars(cls):
            return
        for base in vars(cls).get("__orig_bases__", ()):
            model = get_args(base)[0] if get_origin(base) is EpisodeEnv else None
            if isinstance(model, type) and issubclass(model, BaseModel):
                cls.payload_model = model

    def __init__(self, definition: EnvDefinition[PayloadT]):
        if not isinstance(getattr(type(self), "payload_model", None), type):
            raise TypeError(f"{type(self).__name__} declares no payload model: subclass EpisodeEnv[YourPayload], "
                            "YourPayload a pydantic model of the fields your tasks' payloads hold")
        self.definition = definition
        self.task: Task | None = None
        self.turns = 0
        self._payload: PayloadT | None = None
        self._done = True
        # held by a running call (reset, step, close); interrupt() never takes it, so it can reach a running call
        self._busy = threading.RLock()

    @property
    def max_turns(self) -> int:
        """The turn budget of an episode: the family's ``max_turns``."""
        return self.definition.max_turns

    @property
    def payload(self) -> PayloadT:
        """The running task's payload, validated into the family's payload model at reset."""
        if self._payload is None:
            raise RuntimeError("no episode has started: call reset(task) first")
        return self._payload

    # --- what a family implements ------------------------------------------------------------------------------
    @abstractmethod
    def start(self, task: Task, payload: PayloadT) -> str:
        """Set up a fresh state for ``task`` (the previous episode is already released; ``payload`` is the task's
        payload, typed) and return the first observation."""

    @abstractmethod
    def act(self, action: str) -> StepResult:
        """Apply one action (stripped) and return its result: an observation, :meth:`invalid` or :meth:`final`."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free the episode's resources (never called under a running call; may be called more than once)."""

    # --- what the base gives -----------------------------------------------------------------------------------
    def invalid(self, reason: str) -> StepResult:
        """The invalid-action result: the family's feedback, reward 0, ``invalid=True``; the episode goes on."""
        return StepResult(self.definition.invalid_action(reason), 0.0, invalid=True, info={"reason": reason})

    def final(self, reward: float, success: bool, observation: str = FINAL_OBSERVATION, **info: Any) -> StepResult:
        """The result that ends the task (``terminated``); ``info`` records extras such as the given answer. The
        default observation does not say whether the answer was right: it is never shown to a policy anyway."""
        return StepResult(observation, float(reward), terminated=True, success=success, info=info)

    def reset(self, task: Task) -> str:
        if task.env != self.definition.id:
            raise ValueError(f"task {task.id} belongs to {task.env}, not {self.definition.id}")
        payload = parse_payload(self.payload_model, task)
        with self._busy:
            self.close()
            observation = self.start(task, payload)  # type: ignore[arg-type]
            self.task, self._payload, self.turns, self._done = task, payload, 0, False  # type: ignore[assignment]
            return observation

    def step(self, action: str) -> StepResult:
        with self._busy:
            if self._done or self.task is None:
                raise RuntimeError("the episode is over or was never started: call reset(task) first")
            self.turns += 1
            result = self.act(action.strip())
            if not result.terminated and self.turns >= self.max_turns:  # the budget is spent: truncated, failed
                result = replace(result, reward=0.0, truncated=True, success=False)
            self._done = result.terminated or result.truncated
            return result

    def close(self) -> None:
        """Free the episode. Safe to call twice; if a call is running on another thread, it is interrupted and
        waited for first (freeing a resource under a running call, such as a SQLite connection, can crash)."""
        if not self._busy.acquire(blocking=False):
            self.interrupt()
            self._busy.acquire()
        try:
            self._done = True
            self.release()
        finally:
            self._busy.release()


class EnvDefinition(ABC, Generic[PayloadT]):
    """An environment family: identity, tasks, prompts, expert, and a factory for instances.

    A family sets ``env_class`` (its :class:`EpisodeEnv` subclass, which declares the payload model) and implements
    :meth:`derive_tasks`, the prompts, the expert and a wrong answer; the base caches the tasks, builds instances and
    validates payloads. ``EnvDefinition[MyPayload]`` only tells a type checker what :meth:`payload` returns."""

    name: str  # family name, e.g. "db"
    version: int  # bump on any change to prompts, tasks or scoring
    description: str = ""
    max_turns: int = 10  # the family's default turn budget for an episode
    held_out: bool = False  # declare the family held-out for evaluation, whatever the training data holds
    # the conformance *test* checks only the first N test tasks of a family whose tasks cost seconds each to set up
    # (household generates a game per task); `agenttuning check` always checks every one. None: every one.
    test_sample: int | None = None
    env_class: type[EpisodeEnv[PayloadT]]  # what make() builds for an episode

    @property
    def id(self) -> str:
        """Versioned id, e.g. ``db-v1``."""
        return f"{self.name}-v{self.version}"

    # --- tasks ---------------------------------------------------------------------------------------------
    @abstractmethod
    def derive_tasks(self) -> Mapping[str, list[Task]]:
        """Every task of both splits (keys ``"train"`` and ``"test"``), each in a deterministic order: the same lists
        on every call and machine. Called once per definition, by :meth:`tasks`."""

    def tasks(self, split: Split) -> list[Task]:
        """All tasks of a split, in a deterministic order: :meth:`derive_tasks`, run once per definition (thread-safe,
        so concurrent first calls derive once); a fresh list on every call."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
        state = vars(self)
        with state.setdefault("_derive_lock", threading.Lock()):  # setdefault is atomic: one lock per definition
            if "_derived_tasks" not in state:
                state["_derived_tasks"] = dict(self.derive_tasks())
        return list(state["_derived_tasks"][split])

    def payload(self, task: Task) -> PayloadT:
        """``task``'s payload as the family's payload model (its ``env_class``'s), for code outside an episode such
        as the expert; :class:`PayloadError` naming the task if it does not fit."""
        return parse_payload(self.env_class.payload_model, task)  # type: ignore[return-value]

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
        suite (see :mod:`agenttuning.rollout.conformance`): every one must come back as an observation of bounded size within
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
    def unavailable_reason(self) -> str | None:
        """Why this family cannot run episodes on this machine (a missing system tool, say), or None when it can.

        Listing, tasks and prompts work either way; the conformance tests skip an unavailable family with this reason.
        """
        return None

    def make(self) -> Environment:
        """A fresh environment instance for one episode: ``env_class(self)`` (a family whose instances are not an
        :class:`EpisodeEnv` overrides this instead)."""
        env_class = getattr(self, "env_class", None)
        if env_class is None:
            raise TypeError(f"{type(self).__name__} sets no env_class: name the EpisodeEnv subclass that runs an "
                            "episode (or override make())")
        return env_class(self)

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


def _load_entry_points() -> None:
    """Register every family named in the ``agenttuning.envs`` entry points: the built-in ones (declared in
    ``pyproject.toml``) exactly as a third party's."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
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
    """Look up ``name`` or ``name-vN``; asking for a version other than the registered one is an error.
    ``remote:URL`` is a family served over HTTP (see :mod:`agenttuning.envs.remote`), imported only when named."""
    if env_id.startswith("remote:"):  # by module name: this module imports no environment
        return import_module("agenttuning.envs.remote").definition_for(env_id)
    _load_entry_points()
    m = _ID.match(env_id)
    if not m or m["name"] not in _REGISTRY:
        names = ", ".join(sorted(_REGISTRY)) or (
            "none: environments register through entry points, so install the package (pip install -e .)")
        raise KeyError(f"unknown environment {env_id!r} (registered: {names})")
    d = _REGISTRY[m["name"]]
    if m["version"] is not None and int(m["version"]) != d.version:
        raise KeyError(f"environment {env_id!r} is not available: the registered version is {d.id}")
    return d
