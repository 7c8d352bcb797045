"""Question templates for the ``db`` environment (AgentTuning section 2.2, *task derivation*).

Each template reads the database once and yields :class:`Candidate` questions, each with the gold SQL that answers it
and the *entity* it is about (a country, a sub-region, a currency, a language). Entities, not questions, are assigned
to splits, so no test question talks about a country seen in training. Whether a candidate is kept (non-empty,
unambiguous answer; a change that really changes rows) is decided in :mod:`.tasks`, which runs the gold SQL.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from agenttuning.envs.db.payload import Kind
from agenttuning.envs.derivation import stable_int


@dataclass(frozen=True)
class Candidate:
    template: str
    entity: str  # split key, e.g. "country:FR"
    question: str
    sql: str
    need: str  # what the expert says it needs, e.g. "the capital of France"
    tables: tuple[str, ...]
    kind: Kind = "select"
    ordered: bool = False
    tie_sql: str | None = None  # returns the ordering keys of the top k+1 rows: they must all differ
    scope: tuple[str, str, str] | None = None  # mutations: (table, column, value) holding every changed row


def q(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


class World:
    """The facts templates draw from, read once from the database in a stable order."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        cols = "alpha2, name, capital, subregion, currency_code, demonym, population"
        rows = conn.execute(f"SELECT {cols} FROM countries ORDER BY alpha2")
        self.countries = [dict(zip(cols.split(", "), r)) for r in rows]
        self.cities: dict[str, list[tuple]] = defaultdict(list)  # alpha2 -> (id, name, population, timezone)
        for cid, name, cc, pop, tz in conn.execute(
            "SELECT id, name, country_code, population, timezone FROM cities "
            "WHERE population IS NOT NULL ORDER BY country_code, population DESC, id"
        ):
            self.cities[cc].append((cid, name, pop, tz))

    @cached_property
    def city_name_counts(self) -> dict[tuple[str, str | None], int]:
        """How many cities share a name worldwide (key (name, None)) and within a country (key (name, alpha2))."""
        counts: dict[tuple[str, str | None], int] = defaultdict(int)
        for name, cc in self.conn.execute("SELECT name, country_code FROM cities"):
            counts[(name, None)] += 1
            counts[(name, cc)] += 1
        return counts

    def column(self, sql: str) -> list:
        return [r[0] for r in self.conn.execute(sql)]


def _pick(options: list, *key: str):
    return options[stable_int(*key) % len(options)]


# --------------------------------------------------------------------------------------------------------------
# Questions about one country


def country_questions(w: World) -> Iterator[Candidate]:
    for c in w.countries:
        a2, name, key = c["alpha2"], c["name"], f"country:{c['alpha2']}"
        cq = q(name)

        def mk(template: str, question: str, sql: str, need: str, tables: tuple[str, ...], **kw) -> Candidate:
            return Candidate(template, key, question, sql, need, tables, **kw)

        yield mk("capital", f"What is the capital of {name}?",
                 f"SELECT capital FROM countries WHERE name = {cq}", f"the capital of {name}", ("countries",))
        yield mk("alpha3", f"What is the three-letter ISO code of {name}?",
                 f"SELECT alpha3 FROM countries WHERE name = {cq}", f"the alpha-3 code of {name}", ("countries",))
        yield mk("demonym", f"What are people from {name} called (the demonym)?",
                 f"SELECT demonym FROM countries WHERE name = {cq}", f"the demonym of {name}", ("countries",))
        yield mk("currency_name", f"What is the name of the currency used in {name}?",
                 "SELECT cu.name FROM countries co JOIN currencies cu ON cu.code = co.currency_code "
                 f"WHERE co.name = {cq}", f"the currency of {name}", ("countries", "currencies"))
        yield mk("count_subdivisions", f"How many subdivisions of {name} does the database list?",
                 "SELECT COUNT(*) FROM subdivisions "
                 f"WHERE country_code = (SELECT alpha2 FROM countries WHERE name = {cq})",
                 f"the number of subdivisions of {name}", ("subdivisions", "countries"))
        yield mk("subdivision_types",
                 f"For each type of subdivision in {name}, how many subdivisions of that type are there? "
                 "Answer with (type, count) pairs.",
                 "SELECT s.type, COUNT(*) FROM subdivisions s JOIN countries c ON c.alpha2 = s.country_code "
                 f"WHERE c.name = {cq} GROUP BY s.type", f"the subdivisions of {name} counted by type",
                 ("subdivisions", "countries"))
        yield mk("neighbours", f"Which countries share a land border with {name}? Give their names.",
                 "SELECT n.name FROM borders b JOIN countries c ON c.alpha2 = b.country_code "
                 f"JOIN countries n ON n.alpha2 = b.neighbour_code WHERE c.name = {cq}",
                 f"the neighbours of {name}", ("borders", "countries"))
        yield mk("neighbours_more_populous",
                 f"Which countries that border {name} have a larger population than {name}?",
                 "SELECT n.name FROM borders b JOIN countries n ON n.alpha2 = b.neighbour_code "
                 f"WHERE b.country_code = (SELECT alpha2 FROM countries WHERE name = {cq}) "
                 f"AND n.population > (SELECT population FROM countries WHERE name = {cq})",
                 f"the neighbours of {name} with more people than it", ("borders", "countries"))
        yield mk("languages", f"Which languages are spoken in {name}? Give the language names.",
                 "SELECT l.name FROM country_languages cl JOIN languages l ON l.code = cl.language_code "
                 f"JOIN countries c ON c.alpha2 = cl.country_code WHERE c.name = {cq}",
                 f"the languages of {name}", ("country_languages", "languages", "countries"))
        yield mk("main_language", f"Which language is ranked first among the languages of {name}?",
                 "SELECT l.name FROM country_languages cl JOIN languages l ON l.code = cl.language_code "
                 f"JOIN countries c ON c.alpha2 = cl.country_code WHERE c.name = {cq} AND cl.rank = 1",
                 f"the first-ranked language of {name}", ("country_languages", "languages", "countries"))

        cities = w.cities.get(a2, [])
        if len(cities) < 2:
            continue
        in_c = f"country_code = (SELECT alpha2 FROM countries WHERE name = {cq})"
        threshold = _pick([50_000, 100_000, 200_000, 500_000, 1_000_000], "threshold", a2)
        yield mk("count_cities_above", f"How many cities in {name} have more than {threshold} inhabitants?",
                 f"SELECT COUNT(*) FROM cities WHERE {in_c} AND population > {threshold}",
                 f"the number of cities in {name} above {threshold} people", ("cities", "countries"))
        for template, question, aggregate, need in (  # one aggregate over all the country's cities
            ("avg_city_population", f"What is the average population of the cities of {name}?", "AVG(population)",
             f"the average city population in {name}"),
            ("max_city_population", f"How many people live in the most populous city of {name}?", "MAX(population)",
             f"the largest city population in {name}"),
            ("timezone_count", f"How many different time zones do the cities of {name} use?",
             "COUNT(DISTINCT timezone)", f"the distinct time zones of the cities in {name}"),
        ):
            yield mk(template, question, f"SELECT {aggregate} FROM cities WHERE {in_c}", need, ("cities", "countries"))
        k = _pick([3, 5], "top", a2)
        yield mk("top_cities", f"What are the {k} most populous cities of {name}, from largest to smallest?",
                 f"SELECT name FROM cities WHERE {in_c} ORDER BY population DESC LIMIT {k}",
                 f"the {k} largest cities of {name} in order", ("cities", "countries"), ordered=True,
                 tie_sql=f"SELECT population FROM cities WHERE {in_c} ORDER BY population DESC LIMIT {k + 1}")
        yield mk("northernmost_city", f"Which city of {name} lies furthest north?",
                 f"SELECT name FROM cities WHERE {in_c} ORDER BY latitude DESC LIMIT 1",
                 f"the northernmost city of {name}", ("cities", "countries"),
                 tie_sql=f"SELECT latitude FROM cities WHERE {in_c} ORDER BY latitude DESC LIMIT 2")
        yield mk("cities_above_average",
                 f"Which cities in {name} have more inhabitants than the average city of {name}?",
                 f"SELECT name FROM cities WHERE {in_c} AND population > "
                 f"(SELECT AVG(population) FROM cities WHERE {in_c})",
                 f"the cities of {name} above its average city size", ("cities", "countries"))
        unique = [ci for ci in cities if w.city_name_counts[(ci[1], a2)] == 1 and ci[2] >= 100_000]
        if unique:
            city = _pick(unique, "coords", a2)[1]
            yield mk("city_coordinates", f"What are the latitude and longitude of the city {city} in {name}?",
                     "SELECT latitude, longitude FROM cities "
                     f"WHERE name = {q(city)} AND {in_c}", f"the coordinates of {city}", ("cities", "countries"))
        famous = [ci for ci in unique if w.city_name_counts[(ci[1], None)] == 1]
        if famous:
            city = famous[0][1]
            yield mk("country_of_city", f"In which country is the city of {city}?",
                     "SELECT co.name FROM cities ci JOIN countries co ON co.alpha2 = ci.country_code "
                     f"WHERE ci.name = {q(city)}", f"the country of {city}", ("cities", "countries"))


# --------------------------------------------------------------------------------------------------------------
# Questions about groups of countries (other entities, split on their own)


def group_questions(w: World) -> Iterator[Candidate]:
    for sub in w.column("SELECT DISTINCT subregion FROM countries WHERE subregion IS NOT NULL ORDER BY 1"):
        key, s = f"subregion:{sub}", q(sub)
        yield Candidate("subregion_population", key,
                        f"What is the combined population of all countries in the sub-region {sub}?",
                        f"SELECT SUM(population) FROM countries WHERE subregion = {s}",
                        f"the total population of {sub}", ("countries",))
        yield Candidate("subregion_largest", key, f"Which country of the sub-region {sub} has the largest area?",
                        f"SELECT name FROM countries WHERE subregion = {s} ORDER BY area_km2 DESC LIMIT 1",
                        f"the largest country of {sub}", ("countries",),
                        tie_sql=f"SELECT area_km2 FROM countries WHERE subregion = {s} ORDER BY area_km2 DESC LIMIT 2")
        yield Candidate("subregion_above_average", key,
                        f"How many countries in the sub-region {sub} have more people than the average country "
                        "of that sub-region?",
                        f"SELECT COUNT(*) FROM countries WHERE subregion = {s} AND population > "
                        f"(SELECT AVG(population) FROM countries WHERE subregion = {s})",
                        f"the countries of {sub} above its average population", ("countries",))
    for code, cname in w.conn.execute(
        "SELECT code, name FROM currencies WHERE code IN (SELECT currency_code FROM countries) ORDER BY code"
    ):
        yield Candidate("currency_users", f"currency:{code}",
                        f"How many countries use the {cname} ({code}) as their currency?",
                        f"SELECT COUNT(*) FROM countries WHERE currency_code = {q(code)}",
                        f"the countries using {code}", ("countries",))
    for code, lname in w.conn.execute("SELECT code, name FROM languages ORDER BY code"):
        yield Candidate("language_countries", f"language:{code}", f"In how many countries is {lname} spoken?",
                        "SELECT COUNT(*) FROM country_languages cl JOIN languages l ON l.code = cl.language_code "
                        f"WHERE l.name = {q(lname)}", f"the countries where {lname} is spoken",
                        ("country_languages", "languages"))


# --------------------------------------------------------------------------------------------------------------
# Changes (insert / update / delete), graded by the resulting table

_SYLLABLES = ("al", "ber", "cor", "dan", "el", "fen", "gar", "hol", "is", "jor", "kel", "lin", "mar", "nor",
              "ost", "pel", "quin", "ros", "sal", "tor", "ul", "ven", "wen", "yar", "zel")
_SUFFIXES = ("ton", "ville", "burg", "dale", "port", "field", "haven", "mouth")


def invented_town(*key: str) -> str:
    n = stable_int("town", *key)
    parts = [_SYLLABLES[(n >> (8 * i)) % len(_SYLLABLES)] for i in range(2)]
    return ("".join(parts) + _SUFFIXES[(n >> 24) % len(_SUFFIXES)]).capitalize()


def change_questions(w: World) -> Iterator[Candidate]:
    languages = dict(w.conn.execute("SELECT code, name FROM languages"))
    spoken: dict[str, list[str]] = defaultdict(list)
    for cc, lc in w.conn.execute("SELECT country_code, language_code FROM country_languages ORDER BY 1, rank"):
        spoken[cc].append(lc)
    neighbours: dict[str, list[str]] = defaultdict(list)
    for cc, nc in w.conn.execute("SELECT country_code, neighbour_code FROM borders ORDER BY 1, 2"):
        neighbours[cc].append(nc)
    types: dict[str, list[str]] = defaultdict(list)
    for cc, t in w.conn.execute("SELECT DISTINCT country_code, type FROM subdivisions ORDER BY 1, 2"):
        types[cc].append(t)

    for c in w.countries:
        a2, name, key = c["alpha2"], c["name"], f"country:{c['alpha2']}"
        cities = w.cities.get(a2, [])

        def mk(template: str, kind: Kind, question: str, sql: str, need: str, table: str,
               scope: tuple[str, str] = ("country_code", a2)) -> Candidate:
            return Candidate(template, key, question, sql, need, (table,), kind=kind, scope=(table, *scope))

        if cities:
            if cities[0][3]:  # the new town takes the time zone of the largest city
                n = stable_int("new-city", a2)
                town, cid, pop, tz = invented_town(a2), 20_000_000 + n % 1_000_000, 20_000 + n % 80_000, cities[0][3]
                lat, lon = round(-60 + (n >> 20) % 12_000 / 100, 2), round(-180 + (n >> 40) % 36_000 / 100, 2)
                yield mk("insert_city", "insert",
                         f"Add a new city to the database: id {cid}, name {town}, located in {name}, population {pop}, "
                         f"latitude {lat}, longitude {lon}, time zone {tz}.",
                         "INSERT INTO cities (id, name, country_code, population, latitude, longitude, timezone) "
                         f"VALUES ({cid}, {q(town)}, {q(a2)}, {pop}, {lat}, {lon}, {q(tz)})",
                         f"add the city {town} in {name}", "cities")
            unique = [ci for ci in cities if w.city_name_counts[(ci[1], a2)] == 1]
            if unique:
                cid, city, old, _ = _pick(unique, "update-city", a2)
                new = old + (1 + stable_int("delta", a2) % 9) * max(10, old // 100) * _pick([1, -1], "sign", a2)
                yield mk("update_city_population", "update",
                         f"The population of {city} ({name}) has been revised to {new}. Update the database.",
                         f"UPDATE cities SET population = {new} WHERE id = {cid}",
                         f"set the population of {city} to {new}", "cities")
            threshold = _pick([50_000, 100_000, 200_000], "small", a2)
            in_c = f"country_code = {q(a2)}"
            yield mk("delete_small_cities", "delete",
                     f"Delete every city of {name} whose population is below {threshold}.",
                     f"DELETE FROM cities WHERE {in_c} AND population < {threshold}",
                     f"delete the cities of {name} under {threshold} people", "cities")
            bump = _pick([500, 1000, 2500], "bump", a2)
            yield mk("raise_small_cities", "update",
                     f"Increase by {bump} the population of every city of {name} with fewer than {threshold} "
                     "inhabitants.",
                     f"UPDATE cities SET population = population + {bump} WHERE {in_c} AND population < {threshold}",
                     f"raise the small cities of {name} by {bump}", "cities")
            others = [ci for ci in cities[1:] if ci[1] != c["capital"]]
            if others:
                city = _pick(others, "capital", a2)[1]
                yield mk("move_capital", "update", f"{name} has moved its capital to {city}. Update its record.",
                         f"UPDATE countries SET capital = {q(city)} WHERE alpha2 = {q(a2)}",
                         f"make {city} the capital of {name}", "countries", ("alpha2", a2))
        if c["population"]:
            new = c["population"] + (1 + stable_int("cpop", a2) % 50) * max(1, c["population"] // 1000)
            yield mk("update_country_population", "update", f"Set the population of {name} to {new}.",
                     f"UPDATE countries SET population = {new} WHERE alpha2 = {q(a2)}",
                     f"set the population of {name} to {new}", "countries", ("alpha2", a2))
        extra = [lc for nc in neighbours.get(a2, []) for lc in spoken.get(nc, [])[:1] if lc not in spoken.get(a2, [])]
        if extra:
            lc = sorted(set(extra))[stable_int("lang", a2) % len(set(extra))]
            rank = len(spoken.get(a2, [])) + 1
            yield mk("insert_language", "insert",
                     f"Record that {languages[lc]} is also spoken in {name}, with rank {rank} in its language list.",
                     "INSERT INTO country_languages (country_code, language_code, rank) "
                     f"VALUES ({q(a2)}, {q(lc)}, {rank})",
                     f"add {languages[lc]} to the languages of {name}", "country_languages")
        if len(types.get(a2, [])) > 1:
            t = _pick(types[a2], "subtype", a2)
            yield mk("delete_subdivision_type", "delete",
                     f"Remove every subdivision of {name} whose type is {t}.",
                     f"DELETE FROM subdivisions WHERE country_code = {q(a2)} AND type = {q(t)}",
                     f"delete the subdivisions of type {t} in {name}", "subdivisions")


TEMPLATE_SOURCES = (country_questions, group_questions, change_questions)
