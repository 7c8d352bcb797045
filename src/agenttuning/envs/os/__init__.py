"""The ``os`` environment (AgentBench's operating-system task): the agent's bash commands run in a persistent shell
inside a bubblewrap sandbox (:mod:`.sandbox`, with its cgroups in :mod:`.cgroups` and its launcher in
:mod:`._launch`)."""

from __future__ import annotations

from functools import cache

from agenttuning.envs.os.definition import OsDefinition

__all__ = ["OsDefinition", "definition"]

definition = cache(OsDefinition)  # the entry point: one shared instance per process, so its tasks are derived once
