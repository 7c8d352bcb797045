"""How each kind of environment server is spoken to: ours, and AgentGym's ``agentenv-*`` servers.

AgentGym's servers share a pattern but differ in the details, so each is written here from its server code (the
``agentenv-*/agentenv_*/server.py`` route and ``model.py`` request models, and the per-id wrapper's return values;
their READMEs are not always right). All of them answer an error with status 200 and a body ``{"error": "..."}``,
which is raised here as :class:`RemoteEnvError`; a reward that is a running score becomes per-step differences, so
that an episode's rewards sum to its final score as the rollout engine expects.

Per flavor (the full table, with every request and answer, is in docs/envs/remote.md):

- ``agenttuning`` (ours): ``/create`` -> ``{"id"}``; ``/reset {"id","data_idx"}``; ``/step {"id","action"}`` answers
  every field of our step result (terminated, truncated, success, invalid, info), all kept;
- ``textcraft``: ``/create`` answers ``{"id","observation",...}``; ``reward`` is per step;
- ``babyai``: ``/create`` -> ``{"id"}``; ``reward`` is the running progress in [0, 1] (``score`` sums it per step);
- ``sciworld``: the first observation is ``task_description`` + ``observation``; ``score`` runs 0-100 (scaled to 1);
- ``alfworld``: ``/reset {"id","game","world_type":"Text"}``; the first observation lists AVAILABLE ACTIONS;
- ``webshop``: ``/create`` answers a bare int; bodies key it ``env_idx``; ``/reset {"env_idx","session_id"}`` answers
  ``[obs, null]`` and the observation is read from ``GET /observation?env_idx=``; ``/step`` answers ``state``.

``close`` is ``POST /close {"id"}`` (answered ``true``/``false``) where the server has one; AgentGym's ALFWorld and
WebShop servers have none, so their instances live as long as the server (as with AgentGym's own client).

TextCraft and BabyAI match actions against their command lists as typed, so, as AgentGym's clients do before
sending, an action for them keeps only letters, digits, commas and spaces, with runs of spaces collapsed. An action
longer than :data:`MAX_FOREIGN_ACTION_CHARS` is not sent to an AgentGym server (no command of theirs is that long)
and one longer than :data:`MAX_OWN_ACTION_CHARS` not to ours (it would pass the body limit as escaped JSON): either
gets the invalid-action feedback. Ours gets every shorter action whole, and the served family answers it (the
conformance checker's megabyte actions included).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agenttuning.envs.base import StepResult
from agenttuning.envs.remote.http import RemoteEnvError, RemoteHTTP
from agenttuning.envs.remote.protocol import CreateResponse, ResetResponse, StepResponse

MAX_FOREIGN_ACTION_CHARS = 4096
MAX_OWN_ACTION_CHARS = 2 << 20  # at most 12 MiB as escaped JSON, under env-serve's 16 MiB default
_NOT_COMMAND = re.compile(r"[^A-Za-z0-9, ]+")


@dataclass
class Episode:
    """What a flavor keeps about one running episode: the server's instance id and the last running score."""

    iid: int
    score: float = 0.0


class Flavor:
    """The default shapes (TextCraft's, the most common): ``{"id"}`` bodies, ``observation``/``reward``/``done``."""

    name = "textcraft"
    id_key = "id"  # the instance id's key in request bodies and query strings
    score_key: str | None = None  # a running score to turn into per-step rewards (None: ``reward`` is per step)
    score_scale = 1.0
    sanitize = True  # keep letters, digits, commas and spaces (see the module docstring)
    has_close = True
    max_action_chars: int | None = MAX_FOREIGN_ACTION_CHARS

    # --- calls -------------------------------------------------------------------------------------------------
    def create(self, http: RemoteHTTP, stop: threading.Event | None) -> int:
        # a create is not repeated after a timeout: a second one would leak the first instance on the server
        answer = _checked(http.post("/create", {}, idempotent=False, stop=stop), "/create")
        if isinstance(answer, bool) or not isinstance(answer, int | dict):
            raise RemoteEnvError(f"/create answered {answer!r:.80}, not an id")
        if isinstance(answer, dict):
            answer = answer.get("id")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise RemoteEnvError(f"/create answered no integer id ({answer!r:.80})")
        return answer

    def reset(self, http: RemoteHTTP, ep: Episode, data_idx: int, stop: threading.Event | None) -> str:
        answer = _object(http.post("/reset", self.reset_body(ep, data_idx), idempotent=True, stop=stop), "/reset")
        ep.score = 0.0
        return self.first_observation(http, ep, answer, stop)

    def reset_body(self, ep: Episode, data_idx: int) -> dict[str, Any]:
        return {self.id_key: ep.iid, "data_idx": data_idx}

    def first_observation(self, http: RemoteHTTP, ep: Episode, answer: dict[str, Any],
                          stop: threading.Event | None) -> str:  # fmt: skip
        return _text(answer, "observation", "/reset")

    def step(self, http: RemoteHTTP, ep: Episode, action: str, stop: threading.Event | None) -> StepResult:
        if self.sanitize:
            action = " ".join(_NOT_COMMAND.sub("", action).split())
        answer = _object(http.post("/step", {self.id_key: ep.iid, "action": action}, idempotent=False, stop=stop),
                         "/step")
        observation = _text(answer, self.observation_key, "/step")
        done = answer.get("done")
        if not isinstance(done, bool):
            raise RemoteEnvError(f"/step answered done={done!r:.40}, not a boolean")
        reward = _number(answer, self.score_key or "reward", "/step")
        if self.score_key is not None:  # a running score: this step's part of it
            reward, ep.score = reward * self.score_scale - ep.score, reward * self.score_scale
        info = {k: v for k, v in answer.items() if k in self.info_keys}
        return StepResult(observation, reward, terminated=done, info=info)

    observation_key = "observation"
    info_keys: frozenset[str] = frozenset()

    def close(self, http: RemoteHTTP, ep: Episode) -> None:
        if self.has_close:  # best effort: a short deadline, never retried at length
            http.post("/close", {self.id_key: ep.iid}, idempotent=True, timeout=min(http.timeout, 10.0), retries=1)


class TextCraft(Flavor):
    pass


class BabyAI(Flavor):
    name = "babyai"
    # ``reward`` is the episode's progress so far (max over its milestones, 1 when done); ``score`` adds the
    # progress of every step, so only ``reward`` sums correctly once made per-step
    score_key = "reward"
    info_keys = frozenset({"score"})


class SciWorld(Flavor):
    name = "sciworld"
    score_key, score_scale = "score", 0.01
    sanitize = False

    def first_observation(self, http: RemoteHTTP, ep: Episode, answer: dict[str, Any],
                          stop: threading.Event | None) -> str:  # fmt: skip
        return _text(answer, "task_description", "/reset") + "\n" + _text(answer, "observation", "/reset")


class AlfWorld(Flavor):
    name = "alfworld"
    sanitize = False
    has_close = False

    def reset_body(self, ep: Episode, data_idx: int) -> dict[str, Any]:
        return {"id": ep.iid, "game": data_idx, "world_type": "Text"}

    def first_observation(self, http: RemoteHTTP, ep: Episode, answer: dict[str, Any],
                          stop: threading.Event | None) -> str:  # fmt: skip
        actions = answer.get("available_actions", [])
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise RemoteEnvError(f"/reset answered available_actions={actions!r:.80}, not a list of strings")
        return f"{_text(answer, 'observation', '/reset')}\nAVAILABLE ACTIONS: {','.join(actions)}"


class WebShop(Flavor):
    name = "webshop"
    id_key = "env_idx"
    observation_key = "state"
    sanitize = False
    has_close = False

    def reset(self, http: RemoteHTTP, ep: Episode, data_idx: int, stop: threading.Event | None) -> str:
        # /reset answers a pair (observation, None); the observation to show is /observation's, as AgentGym's
        # client reads it
        answer = _checked(http.post("/reset", {"env_idx": ep.iid, "session_id": data_idx}, idempotent=True,
                                    stop=stop), "/reset")  # fmt: skip
        if not isinstance(answer, list):
            raise RemoteEnvError(f"/reset answered {answer!r:.80}, not a [observation, info] pair")
        observation = _checked(http.get("/observation", params={"env_idx": ep.iid}, stop=stop), "/observation")
        if not isinstance(observation, str):
            raise RemoteEnvError(f"/observation answered {observation!r:.80}, not a string")
        return observation


class AgentTuning(Flavor):
    """Our own server (``agenttuning env-serve``): every field of the step result travels, so a remote copy of a
    family plays exactly as the local one."""

    name = "agenttuning"
    sanitize = False
    max_action_chars = MAX_OWN_ACTION_CHARS

    def create(self, http: RemoteHTTP, stop: threading.Event | None) -> int:
        return _model(CreateResponse, http.post("/create", {}, idempotent=False, stop=stop), "/create").id

    def reset(self, http: RemoteHTTP, ep: Episode, data_idx: int, stop: threading.Event | None) -> str:
        answer = http.post("/reset", {"id": ep.iid, "data_idx": data_idx}, idempotent=True, stop=stop)
        return _model(ResetResponse, answer, "/reset").observation

    def step(self, http: RemoteHTTP, ep: Episode, action: str, stop: threading.Event | None) -> StepResult:
        r = _model(StepResponse, http.post("/step", {"id": ep.iid, "action": action}, idempotent=False, stop=stop),
                   "/step")
        if not math.isfinite(r.reward):
            raise RemoteEnvError(f"/step answered reward={r.reward}, not a finite number")
        return StepResult(r.observation, r.reward, terminated=r.terminated, truncated=r.truncated, info=dict(r.info),
                          success=r.success, invalid=r.invalid)


FLAVORS: dict[str, Flavor] = {f.name: f for f in (AgentTuning(), TextCraft(), BabyAI(), SciWorld(), AlfWorld(),
                                                  WebShop())}  # fmt: skip


def flavor(name: str) -> Flavor:
    try:
        return FLAVORS[name]
    except KeyError:
        raise ValueError(f"unknown remote environment flavor {name!r} (known: {', '.join(FLAVORS)})") from None


# ---------------------------------------------------------------------------------------------------------------
# Checking what came back: a server's answer is input like any other


def _checked(answer: Any, where: str) -> Any:
    """``answer``, unless it is AgentGym's error answer ``{"error": ...}`` (sent with status 200)."""
    if isinstance(answer, dict) and "error" in answer:
        raise RemoteEnvError(f"{where}: the server reported an error: {str(answer['error'])[:300]}")
    return answer


def _object(answer: Any, where: str) -> dict[str, Any]:
    answer = _checked(answer, where)
    if not isinstance(answer, dict):
        raise RemoteEnvError(f"{where} answered {answer!r:.80}, not a JSON object")
    return answer


def _text(answer: dict[str, Any], key: str, where: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str):
        raise RemoteEnvError(f"{where} answered {key}={value!r:.60}, not a string")
    return value


def _number(answer: dict[str, Any], key: str, where: str) -> float:
    value = answer.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RemoteEnvError(f"{where} answered {key}={value!r:.60}, not a finite number")
    return float(value)


def _model(model: type, answer: Any, where: str) -> Any:
    try:
        return model.model_validate(_checked(answer, where))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(body)'}: {err['msg']}" for err in e.errors()[:3])
        raise RemoteEnvError(f"{where} answered a body that does not fit {model.__name__}: {problems}") from None
