"""The environment instance of a remote family: one episode played on a server's instance, over HTTP.

``reset(task)`` creates an instance on the server and resets it to the task's data index (the task's payload holds
only that index: whatever else the task needs stays on the server); ``step`` sends the action; ``close`` frees the
server's instance. What each call sends and reads depends on the server's flavor
(:mod:`agenttuning.envs.remote.flavors`). A failure that retries cannot mend (a server gone, too slow, answering
garbage or too much) raises :class:`~agenttuning.envs.remote.http.RemoteEnvError` from ``reset``/``step``, which the
rollout engine records as that episode's ``env_error``; ``interrupt()`` makes a waiting call return at once.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.remote.flavors import Episode
from agenttuning.envs.remote.http import RemoteEnvError
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.remote.definition import RemoteDefinition

log = logging.getLogger(__name__)


class RemotePayload(BaseModel):
    """A remote task's payload: its index on the server (train tasks first, then test, as the server numbers them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_idx: int = Field(ge=0)


class RemoteEnv(EpisodeEnv[RemotePayload]):
    """One episode on a server's instance (see the module docstring)."""

    definition: RemoteDefinition

    def __init__(self, definition: RemoteDefinition):
        super().__init__(definition)
        self._stop = threading.Event()  # set by interrupt(): a waiting call gives up at once
        self._episode: Episode | None = None

    def start(self, task: Task, payload: RemotePayload) -> str:
        self._stop.clear()
        flavor, http = self.definition.flavor, self.definition.http
        self._episode = Episode(flavor.create(http, self._stop))  # kept at once: release() frees it if reset fails
        return flavor.reset(http, self._episode, payload.data_idx, self._stop)

    def act(self, action: str) -> StepResult:
        self._stop.clear()
        if self._episode is None:  # pragma: no cover - EpisodeEnv only steps a started episode
            raise RemoteEnvError("no server instance: the episode was not started")
        flavor = self.definition.flavor
        if flavor.max_action_chars is not None and len(action) > flavor.max_action_chars:
            return self.invalid(f"the action is {len(action):,} characters long, over the limit of "
                                f"{flavor.max_action_chars:,}")
        return flavor.step(self.definition.http, self._episode, action, self._stop)

    def interrupt(self) -> None:
        self._stop.set()

    def release(self) -> None:
        episode, self._episode = self._episode, None
        if episode is None:
            return
        try:  # best effort: a server that is gone has no instance left to free
            self.definition.flavor.close(self.definition.http, episode)
        except RemoteEnvError as e:
            log.warning("%s: could not close instance %d: %s", self.definition.url, episode.iid, e)
