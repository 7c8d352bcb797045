"""The ``sciworld`` environment: ScienceWorld's elementary-science tasks, AgentTuning's held-out SciWorld.

Modules: :mod:`.jvm` (the simulator's JVM over py4j, with a bounded heap, and a process-wide pool of them),
:mod:`.tasks` (the payload, and which (task, variation) pairs make the splits), :mod:`.env` (an episode),
:mod:`.definition` (:class:`SciworldDefinition`: prompt, tasks, expert). Needs the ``sciworld`` extra
(``scienceworld``) and Java 11 or newer; without them the family lists no tasks and says why it cannot run.

>>> definition().id
'sciworld-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.sciworld.definition import SciworldDefinition

__all__ = ["SciworldDefinition", "definition"]

definition = cache(SciworldDefinition)  # one shared instance per process, so its tasks are derived once
