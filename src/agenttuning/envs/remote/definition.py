"""A family whose episodes run on an environment server: ``remote:URL`` names it wherever an environment is named.

``remote:http://127.0.0.1:8100`` is a family served by ``agenttuning env-serve``: its identity, prompts, turn budget
and tasks come from the server's ``/info`` and ``/tasks``, so the remote copy has the same id, prompt hash, task ids
and instructions as the family on the server's machine, and its expert and wrong answer are the server's
(``/expert``, ``/wrong_answer``).

``remote:http://HOST:PORT#FLAVOR`` is one of AgentGym's servers (``textcraft``, ``babyai``, ``sciworld``,
``alfworld``, ``webshop``; see :mod:`agenttuning.envs.remote.flavors`). Those servers publish no task list: a task
is a data index, ``FLAVOR-SPLIT-NNNNN`` with the instruction ``FLAVOR data index N`` (the agent reads the real one in
the first observation), and the index ranges of the splits are given after the flavor,
``#babyai?test=0-39&train=40-439`` (inclusive ranges, joined with commas: ``test=0-9,20-29``), by default
``test=0-99`` and no train tasks. Other keys: ``max_turns`` (default 30), ``name`` (the family's name, default the
flavor's), ``timeout`` (seconds per call, default 60) and ``retries`` (default 3). These families have no expert.

In Python, ``RemoteDefinition(url, flavor, train=range(...), test=range(...))`` builds the same family; a package
can register one through the ``agenttuning.envs`` entry points like any family (a zero-argument callable returning
it), which gives a server a fixed name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.remote.client import RemoteEnv, RemotePayload
from agenttuning.envs.remote.flavors import AgentTuning, Flavor, flavor
from agenttuning.envs.remote.http import RemoteEnvError, RemoteHTTP
from agenttuning.envs.remote.protocol import PROTOCOL, REASON_SLOT, EnvInfo, ReplyResponse, TaskList
from agenttuning.schema import Task, Turn

PREFIX = "remote:"
DEFAULT_TEST = range(0, 100)
DEFAULT_MAX_TURNS = 30

_FORMAT = "\n\nIn every turn, first think, then act, in this form:\nThought: <your reasoning>\nAction: <one action>"
#: our own instructions for AgentGym's servers (the observations say the task; these say how to act)
AGENTGYM_PROMPTS = {
    "textcraft": "You craft items in a text version of Minecraft. The first observation lists the crafting commands "
                 "you may use and the item to make. Actions: 'get N ITEM' takes ingredients, 'craft N ITEM using N "
                 "INGREDIENT, N INGREDIENT' crafts with one of the listed commands, 'inventory' shows what you hold. "
                 "Always give quantities.",
    "babyai": "You move an agent through a grid world to reach the goal the first observation states. Actions: "
              "'turn left', 'turn right', 'move forward', 'go to OBJECT N', 'pick up OBJECT N', 'go through DOOR N', "
              "'toggle and go through DOOR N', 'toggle', and 'check available actions'; each observation lists the "
              "actions available.",
    "sciworld": "You carry out a science experiment in a simulated world, as the first observation's task says. "
                "Actions are short commands such as 'look around', 'open OBJECT', 'go to LOCATION', 'pick up "
                "OBJECT', 'move OBJECT to CONTAINER', 'activate OBJECT', 'use OBJECT on OBJECT', 'wait', and "
                "'focus on OBJECT' (only on the object the task names: focusing on another fails the task).",
    "alfworld": "You are in a household and must carry out the task the first observation states. Your action must "
                "be one of the AVAILABLE ACTIONS listed, written exactly as listed.",
    "webshop": "You shop on a web store for the product the instruction describes. Actions: 'search[KEYWORDS]' when "
               "there is a search bar, and 'click[BUTTON]' to click one of the buttons the page shows (a product, "
               "an option, 'Buy Now', 'Next >', 'Back to Search').",
}


class RemoteDefinition(EnvDefinition[RemotePayload]):
    """A family served at ``url`` (see the module docstring).

    Args:
        url: the server's root, ``http://HOST:PORT``.
        flavor: ``agenttuning`` (our ``env-serve``; everything else comes from the server) or an AgentGym flavor.
        train, test: AgentGym flavors: the data indices of each split (default: test 0-99, no train).
        name, max_turns, system_prompt: AgentGym flavors: the family's name (default the flavor's), turn budget and
            instructions (default ours for the flavor).
        timeout, connect_timeout, max_retries, max_response_bytes: see :class:`RemoteHTTP`.
    """

    env_class = RemoteEnv

    def __init__(self, url: str, flavor_name: str = "agenttuning", *, train: Iterable[int] = (),
                 test: Iterable[int] | None = None, name: str | None = None, max_turns: int | None = None,
                 system_prompt: str | None = None, timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_retries: int = 3, max_response_bytes: int | None = None) -> None:  # fmt: skip
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"remote environment URL {url!r}: use http://HOST:PORT")
        self.url = url.rstrip("/")
        self.flavor: Flavor = flavor(flavor_name)
        extra = {} if max_response_bytes is None else {"max_response_bytes": max_response_bytes}
        self.http = RemoteHTTP(self.url, timeout=timeout, connect_timeout=connect_timeout, max_retries=max_retries,
                               **extra)  # fmt: skip
        self.info: EnvInfo | None = None
        if isinstance(self.flavor, AgentTuning):
            if any(v is not None for v in (name, max_turns, system_prompt)) or train or test is not None:
                raise ValueError("an agenttuning server names its own family, tasks and prompts: give only the URL")
            self.info = self._fetch_info()
            self.name, self.version = self.info.name, self.info.version
            self.max_turns, self.held_out = self.info.max_turns, self.info.held_out
            self.description, self.test_sample = self.info.description, self.info.test_sample
            self._prompt = self.info.system_prompt
            self._ranges: dict[str, list[int]] = {}
        else:
            self.name, self.version = name or self.flavor.name, 1
            self.max_turns = max_turns or DEFAULT_MAX_TURNS
            self.description = f"AgentGym's {self.flavor.name} server at {self.url}"
            self._prompt = (system_prompt or AGENTGYM_PROMPTS[self.flavor.name]) + _FORMAT
            self._ranges = {"train": sorted(set(train)), "test": sorted(set(DEFAULT_TEST if test is None else test))}
            both = set(self._ranges["train"]) & set(self._ranges["test"])
            if both:
                raise ValueError(f"remote {self.name}: data indices in both splits: {sorted(both)[:5]}")
            if any(i < 0 for i in self._ranges["train"] + self._ranges["test"]):
                raise ValueError(f"remote {self.name}: data indices must be >= 0")
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")

    def __repr__(self) -> str:
        return f"<RemoteDefinition {self.id} at {self.url} ({self.flavor.name})>"

    def _fetch_info(self) -> EnvInfo:
        try:
            info = EnvInfo.model_validate(self.http.get("/info"))
        except RemoteEnvError as e:
            raise ValueError(f"cannot use the environment server at {self.url}: {e}") from None
        except ValueError as e:  # pydantic's ValidationError: not our server, or another version of it
            raise ValueError(f"{self.url}/info does not describe an agenttuning environment server: {e}") from None
        if info.protocol != PROTOCOL:
            raise ValueError(f"{self.url} speaks {info.protocol!r}; this client speaks {PROTOCOL!r}")
        return info

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> Mapping[str, list[Task]]:
        if self.info is None:
            return {split: [Task(id=f"{self.name}-{split}-{i:05d}", env=self.id, split=split,  # type: ignore[arg-type]
                                 instruction=f"{self.name} data index {i}", payload={"data_idx": i})
                            for i in indices] for split, indices in self._ranges.items()}
        listing = TaskList.model_validate(self.http.get("/tasks"))
        out: dict[str, list[Task]] = {"train": [], "test": []}
        for entry in listing.tasks:
            if entry.split not in out:
                raise RemoteEnvError(f"{self.url}/tasks: task {entry.id} has split {entry.split!r}")
            out[entry.split].append(Task(id=entry.id, env=self.id, split=entry.split,  # type: ignore[arg-type]
                                         instruction=entry.instruction, payload={"data_idx": entry.data_idx}))
        return out

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return self._prompt

    @property
    def one_shot(self) -> list[Turn]:
        return list(self.info.one_shot) if self.info is not None else []

    def invalid_action(self, reason: str) -> str:
        if self.info is None:
            return super().invalid_action(reason)
        return self.info.invalid_action.replace(REASON_SLOT, reason)

    # --- episodes ------------------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """The server's own reason (its family cannot run there), or that it cannot be reached now."""
        try:
            if self.info is not None:
                return EnvInfo.model_validate(self.http.get("/info", timeout=10.0)).unavailable
            self.http.call("GET", "/", idempotent=True, timeout=10.0, retries=1)
        except (RemoteEnvError, ValueError) as e:
            return f"the environment server at {self.url} cannot be used: {e}"
        return None

    def _reply(self, path: str, task: Task, history: list[Turn] | None) -> str:
        if self.info is None or not self.info.expert:
            raise NotImplementedError(f"{self.id}: the {path[1:]} of a remote family runs only on an agenttuning "
                                      f"env-serve server, and {self.url} ({self.flavor.name}) has none")
        body: dict[str, object] = {"data_idx": self.payload(task).data_idx}
        if history is not None:
            body["history"] = [t.model_dump() for t in history]
        return ReplyResponse.model_validate(self.http.post(path, body, idempotent=True)).reply

    def expert(self, task: Task, history: list[Turn]) -> str:
        return self._reply("/expert", task, history)

    def wrong_answer(self, task: Task) -> str:
        return self._reply("/wrong_answer", task, None)


# ---------------------------------------------------------------------------------------------------------------
# remote:URL names

_DEFINITIONS: dict[str, RemoteDefinition] = {}
_LOCK = threading.Lock()
_KEYS = {"train", "test", "max_turns", "name", "timeout", "retries"}


def definition_for(spec: str) -> RemoteDefinition:
    """The family named ``remote:URL[#FLAVOR[?key=value&...]]`` (see the module docstring); one per name, so its
    tasks are listed once however often the name is looked up."""
    with _LOCK:
        if spec not in _DEFINITIONS:
            _DEFINITIONS[spec] = parse_spec(spec)
        return _DEFINITIONS[spec]


def parse_spec(spec: str) -> RemoteDefinition:
    if not spec.startswith(PREFIX):
        raise ValueError(f"{spec!r} is not a remote environment (remote:URL)")
    url, _, fragment = spec[len(PREFIX):].partition("#")
    if not fragment:
        return RemoteDefinition(url)
    flavor_name, _, query = fragment.partition("?")
    options: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in _KEYS:
            raise ValueError(f"{spec!r}: unknown option {key!r} (known: {', '.join(sorted(_KEYS))})")
        try:
            if key in ("train", "test"):
                options[key] = parse_indices(value)
            elif key == "max_turns":
                options[key] = int(value)
            elif key == "timeout":
                options[key] = float(value)
            elif key == "retries":
                options["max_retries"] = int(value)
            else:
                options[key] = value
        except ValueError as e:
            raise ValueError(f"{spec!r}: option {key}={value!r}: {e}") from None
    return RemoteDefinition(url, flavor_name, **options)  # type: ignore[arg-type]


def parse_indices(text: str) -> list[int]:
    """``"0-9,20,30-31"`` -> ``[0, ..., 9, 20, 30, 31]`` (ranges inclusive; empty text: none)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        a, b = int(lo), int(hi) if dash else int(lo)
        if a < 0 or b < a:
            raise ValueError(f"{part!r} is not a range A-B with 0 <= A <= B")
        if b - a > 10_000_000:
            raise ValueError(f"{part!r} holds more than ten million indices")
        out.extend(range(a, b + 1))
    return out
