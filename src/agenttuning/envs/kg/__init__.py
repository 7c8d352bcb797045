"""The ``kg`` environment (AgentBench's knowledge-graph task, rebuilt on the db environment's real geography data).

Modules: :mod:`.data` builds the graph; :mod:`.tools` parses and runs the agent's tool calls; :mod:`.templates`
and :mod:`.tasks` derive multi-hop questions with gold plans and answers, which a task carries as
:mod:`.payload`; :mod:`.env` runs an episode;
:mod:`.grading` scores answers (F1, exact for counts); :mod:`.expert` gives the oracle's replies;
:mod:`.definition` ties them into :class:`KgDefinition`.

>>> definition().id
'kg-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.kg.definition import KgDefinition

__all__ = ["KgDefinition", "definition"]

definition = cache(KgDefinition)  # the entry point: one shared instance per process, so its tasks are derived once
