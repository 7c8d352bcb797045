"""Question templates for the ``kg`` environment (AgentTuning section 2.2, *task derivation*).

Each template walks the graph and yields :class:`Candidate` questions of one to three hops, each with its gold
*plan* (the tool calls that answer it, with the Thought the expert gives for each) and its gold answer, computed
here straight from the graph's edges. Which candidates are kept, and in which split, is decided in :mod:`.tasks`.

Only entities with plain names are named in questions: no comma, no parenthesised disambiguation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from agenttuning.envs.kg.data import Graph


@dataclass(frozen=True)
class Candidate:
    template: str
    question: str
    entities: tuple[str, ...]  # the entities the question names, shown to the agent with it
    plan: tuple[tuple[str, str], ...]  # (action, thought) per tool call; call i creates variable #i
    answer: tuple[str, ...] | int  # gold entities (sorted) or the gold count
    kind: Literal["set", "count"] = "set"


def hop(g: Graph, names: Iterable[str], relation: str) -> frozenset[str]:
    """Every neighbour of ``names`` over ``relation`` (the graph's own edges; what get_neighbors should return)."""
    return frozenset(n for e in names for n in g.neighbors(e, relation))


def plain(name: str | None) -> bool:
    """Whether an entity may be named in a question."""
    return name is not None and "," not in name and "(" not in name


def _set(template: str, question: str, entities: tuple[str, ...], plan: list[tuple[str, str]],
         answer: Iterable[str]) -> Candidate:
    return Candidate(template, question, entities, tuple(plan), tuple(sorted(answer)))


def _count(template: str, question: str, entities: tuple[str, ...], plan: list[tuple[str, str]],
           answer: int) -> Candidate:
    return Candidate(template, question, entities, tuple(plan), answer, kind="count")


def _chain(g: Graph, template: str, question: str, start: str, hops: list[tuple[str, str]], *,
           count: str | None = None) -> Candidate:
    """A question answered by following relations one after another from ``start``: one ``get_neighbors`` per
    (relation, thought) in ``hops``, from ``start`` and then from the variable the call before made, and, with a
    ``count`` thought, a final ``count``. The gold answer follows the graph's own edges the same way, so a plan and
    its answer cannot drift apart."""
    plan, reached = [], frozenset([start])
    for i, (relation, thought) in enumerate(hops):
        plan.append((f"get_neighbors({start if i == 0 else f'#{i - 1}'}, {relation})", thought))
        reached = hop(g, reached, relation)
    if count is None:
        return _set(template, question, (start,), plan, reached)
    plan.append((f"count(#{len(hops) - 1})", count))
    return _count(template, question, (start,), plan, len(reached))


def _countries(g: Graph) -> list[str]:
    return [c for c in g.of_kind("country") if plain(c)]


def _capitals(g: Graph) -> Iterator[tuple[str, str]]:
    """(country, capital) for every country whose capital may be named."""
    for c in _countries(g):
        cap = g.one(c, "capital")
        if plain(cap):
            yield c, cap  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------


def neighbour_count(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        yield _chain(g, "neighbour_count", f"How many countries share a land border with {c}?", c, [
            ("borders", f"The borders relation of {c} gives the countries next to it."),
        ], count="#0 holds those countries; I count them.")


def capital_currency(g: Graph) -> Iterator[Candidate]:
    for _, cap in _capitals(g):
        yield _chain(g, "capital_currency", f"What currency is used in the country whose capital is {cap}?", cap, [
            ("capital_of", f"{cap} is a city; capital_of gives the country it is capital of."),
            ("currency", "#0 is that country; its currency relation gives the currency."),
        ])


def capital_languages(g: Graph) -> Iterator[Candidate]:
    for _, cap in _capitals(g):
        yield _chain(g, "capital_languages", f"Which languages are spoken in the country whose capital is {cap}?",
                     cap, [
            ("capital_of", f"First I find the country whose capital is {cap}."),
            ("languages", "#0 is that country; its languages relation lists its languages."),
        ])


def city_continent(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        for city in sorted(g.neighbors(c, "major_cities") - g.neighbors(c, "capital")):
            if plain(city):
                yield _chain(g, "city_continent", f"On which continent is the country where {city} lies?", city, [
                    ("country", f"{city} is a city; its country relation gives its country."),
                    ("continent", "#0 is that country; now I need its continent."),
                ])


def neighbour_capitals(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        yield _chain(g, "neighbour_capitals", f"What are the capitals of the countries that border {c}?", c, [
            ("borders", f"First I find the countries that border {c}."),
            ("capital", "#0 holds the neighbours; the capital relation gives their capitals."),
        ])


def border_both(g: Graph) -> Iterator[Candidate]:
    countries = _countries(g)
    for i, a in enumerate(countries):
        for b in countries[i + 1:]:
            common = g.neighbors(a, "borders") & g.neighbors(b, "borders")
            if common:
                yield _set("border_both", f"Which countries border both {a} and {b}?", (a, b), [
                    (f"get_neighbors({a}, borders)", f"First the countries that border {a}."),
                    (f"get_neighbors({b}, borders)", f"Now the countries that border {b}."),
                    ("intersection(#0, #1)", f"The countries in both #0 and #1 border {a} and {b}."),
                ], common)


def neighbour_same_currency(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        users = hop(g, hop(g, [c], "currency"), "used_in")
        yield _set("neighbour_same_currency", f"Which countries that border {c} use the same currency as {c}?",
                   (c,), [
            (f"get_neighbors({c}, borders)", f"First the countries that border {c}."),
            (f"get_neighbors({c}, currency)", f"Next the currency of {c}."),
            ("get_neighbors(#1, used_in)", "#1 is that currency; used_in gives every country using it."),
            ("intersection(#0, #2)", "The neighbours in #0 that are also in #2 use the same currency."),
        ], g.neighbors(c, "borders") & users)


def continent_count(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        yield _chain(g, "continent_count", f"How many countries are in the continent that {c} is in?", c, [
            ("continent", f"First the continent of {c}."),
            ("countries", "#0 is that continent; its countries relation lists its countries."),
        ], count="#1 holds them; I count them.")


def currency_users_count(g: Graph) -> Iterator[Candidate]:
    for c in _countries(g):
        candidate = _chain(g, "currency_users_count",
                           f"How many countries use the currency of {c}, counting {c} itself?", c, [
            ("currency", f"First the currency of {c}."),
            ("used_in", "#0 is that currency; used_in gives the countries using it."),
        ], count="#1 holds them; I count them.")
        # a currency only one country uses makes "how many" trivial
        if candidate.answer >= 2:  # type: ignore[operator]
            yield candidate


def language_in_continent(g: Graph) -> Iterator[Candidate]:
    for lang in g.of_kind("language"):
        speakers = g.neighbors(lang, "spoken_in")
        continents = hop(g, speakers, "continent")
        if not plain(lang) or len(continents) < 2:  # one continent: the intersection would change nothing
            continue
        for k in sorted(continents):
            if plain(k):
                yield _set("language_in_continent", f"In which countries of {k} is {lang} spoken?", (k, lang), [
                    (f"get_neighbors({lang}, spoken_in)", f"First every country where {lang} is spoken."),
                    (f"get_neighbors({k}, countries)", f"Now every country of {k}."),
                    ("intersection(#0, #1)", f"The countries in both #0 and #1 are those of {k} speaking {lang}."),
                ], speakers & g.neighbors(k, "countries"))


def capital_neighbour_currencies(g: Graph) -> Iterator[Candidate]:
    for _, cap in _capitals(g):
        yield _chain(g, "capital_neighbour_currencies",
                     f"Which currencies are used by the countries that border the country whose capital is {cap}?",
                     cap, [
            ("capital_of", f"First the country whose capital is {cap}."),
            ("borders", "#0 is that country; next the countries that border it."),
            ("currency", "#1 holds the neighbours; their currency relation gives the currencies."),
        ])


def capital_subregion_count(g: Graph) -> Iterator[Candidate]:
    for _, cap in _capitals(g):
        yield _chain(g, "capital_subregion_count",
                     f"How many countries are in the subregion of the country whose capital is {cap}?", cap, [
            ("capital_of", f"First the country whose capital is {cap}."),
            ("subregion", "#0 is that country; next its subregion."),
            ("countries", "#1 is the subregion; its countries relation lists its countries."),
        ], count="#2 holds them; I count them.")


TEMPLATES: tuple[Callable[[Graph], Iterator[Candidate]], ...] = (
    neighbour_count,
    capital_currency,
    capital_languages,
    city_continent,
    neighbour_capitals,
    border_both,
    neighbour_same_currency,
    continent_count,
    currency_users_count,
    language_in_continent,
    capital_neighbour_currencies,
    capital_subregion_count,
)
