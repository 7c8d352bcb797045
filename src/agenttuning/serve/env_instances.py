"""The server's environment instances: each on a thread of its own, bounded in number, reaped when idle.

An environment instance is used from one thread at a time and must be closed after its running call returns (see
:mod:`agenttuning.envs.base`). So each instance the server creates gets a single-thread executor: ``make``,
``reset``, ``step`` and ``close`` all run there, in the order they arrive, off the event loop (an episode's CPU work
never stalls another client's request), and a ``close`` queued behind a running step runs when the step returns
(the step is sent ``interrupt()`` first, which the contract makes safe from any thread).

The pool holds at most ``max_instances``; a ``create`` beyond that first reaps instances idle for ``idle_s`` and
then, if none is free, is refused (:class:`PoolFull`, answered 503 so that a client retries later). A reaper task
closes instances left idle for ``idle_s`` (a client that died without ``/close``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agenttuning.envs.base import EnvDefinition, Environment

T = TypeVar("T")
log = logging.getLogger(__name__)


class PoolFull(RuntimeError):
    """Every instance slot is taken by an instance in use."""


class UnknownInstance(KeyError):
    """No live instance has this id (never created, closed, or reaped)."""


@dataclass
class Instance:
    iid: int
    executor: ThreadPoolExecutor
    env: Environment | None = None
    observation: str = ""  # the last observation (GET /observation)
    task_id: str | None = None
    busy: int = 0  # calls queued or running: a busy instance is never reaped
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this instance's own thread."""
        self.busy += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            self.busy -= 1
            self.last_used = time.monotonic()


class InstancePool:
    """Instances of one family by id (see the module docstring); used from the event loop only."""

    def __init__(self, definition: EnvDefinition, *, max_instances: int = 64, idle_s: float = 600.0) -> None:
        if max_instances < 1 or idle_s <= 0:
            raise ValueError("max_instances must be >= 1 and idle_s > 0")
        self.definition, self.max_instances, self.idle_s = definition, max_instances, idle_s
        self._instances: dict[int, Instance] = {}
        self._ids = itertools.count()
        self.counters = {"created": 0, "closed": 0, "reaped": 0}

    def __len__(self) -> int:
        return len(self._instances)

    async def create(self) -> Instance:
        if len(self._instances) >= self.max_instances:
            await self.reap()
        if len(self._instances) >= self.max_instances:
            raise PoolFull(f"all {self.max_instances} instances are in use (env-serve --max-instances); close one "
                           "or retry later")
        iid = next(self._ids)
        inst = Instance(iid, ThreadPoolExecutor(1, thread_name_prefix=f"env-{iid}"))
        self._instances[iid] = inst  # taken before the await: concurrent creates cannot pass the limit
        try:
            inst.env = await inst.run(self.definition.make)  # made on its own thread, like everything after
        except BaseException:
            self._instances.pop(iid, None)
            inst.executor.shutdown(wait=False)
            raise
        self.counters["created"] += 1
        return inst

    def get(self, iid: int) -> Instance:
        inst = self._instances.get(iid)
        if inst is None:
            raise UnknownInstance(f"no environment instance {iid} (never created, closed, or idle for over "
                                  f"{self.idle_s:g}s and reaped)")
        return inst

    async def close(self, iid: int) -> bool:
        inst = self._instances.pop(iid, None)
        if inst is None:
            return False
        await self._close(inst)
        self.counters["closed"] += 1
        return True

    async def _close(self, inst: Instance) -> None:
        inst.closed = True
        env = inst.env
        if env is not None:
            if inst.busy:
                env.interrupt()  # thread-safe by the contract: the running call returns soon
            try:
                await inst.run(env.close)  # on its own thread, after any call queued before it
            except Exception:
                log.exception("closing environment instance %d failed", inst.iid)
        inst.executor.shutdown(wait=False)

    async def reap(self) -> int:
        """Close the instances idle (no call running or queued) for over ``idle_s``; how many were closed."""
        now = time.monotonic()
        idle = [i for i in self._instances.values() if not i.busy and now - i.last_used > self.idle_s]
        for inst in idle:
            self._instances.pop(inst.iid, None)
            await self._close(inst)
        self.counters["reaped"] += len(idle)
        if idle:
            log.info("reaped %d idle environment instances", len(idle))
        return len(idle)

    async def close_all(self) -> None:
        for iid in list(self._instances):
            await self.close(iid)
