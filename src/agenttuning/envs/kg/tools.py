"""The ``kg`` tools (AgentBench's knowledge-graph task, this package's own syntax): parse one action, run it against
the graph, and describe the result.

Actions, one per turn (an entity ``E`` is a name from the graph or a variable ``#k``)::

    get_relations(E)             the relations E has (no variable)
    get_neighbors(E, relation)   the entities E links to by the relation      -> new variable
    intersection(#a, #b)         the entities in both variables (same kind)   -> new variable
    count(#a)                    how many entities #a holds                   -> new variable (a number)
    Final Answer: #k             ends the episode; #k is graded

A tool that yields entities or a number stores them as the next variable ``#0``, ``#1``, ... and the observation
says so, showing at most :data:`MAX_PREVIEW` names. Everything the agent writes is matched with regular expressions
and looked up in dictionaries; nothing is evaluated. An action that cannot be run raises :class:`InvalidAction` whose
message tells the agent what to fix (the environment turns it into invalid-action feedback).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from agenttuning.envs.kg.data import PLURAL, RELATIONS, Graph, norm

MAX_PREVIEW = 10  # names shown per variable
MAX_NAME_CHARS = 100  # longer "entity names" are not searched for near matches
TOOLS = {"get_relations": 1, "get_neighbors": 2, "intersection": 2, "count": 1}
_ALIASES = {"get_neighbours": "get_neighbors", "intersect": "intersection"}
_DECOR = "`*_ \t"
_CALL = re.compile(r"^([A-Za-z_]\w*)\s*\((.*)\)$", re.DOTALL)
_FINAL_START = re.compile(r"^[`*_\s]*(final[ _]*answer|answer)\b", re.IGNORECASE)
_FINAL = re.compile(r"final[ _]*answer\s*:?", re.IGNORECASE)
_VARIABLE = re.compile(r"^#(\d+)$")
_INTEGER = re.compile(r"^[+-]?\d+$")


class InvalidAction(ValueError):
    """An action that cannot be run; the message is the feedback the agent sees."""


@dataclass(frozen=True)
class EntitySet:
    """A variable holding entities, all of one kind."""

    kind: str
    members: frozenset[str]


@dataclass(frozen=True)
class Number:
    """A variable holding a number (from ``count``), or a number given directly as a final answer."""

    value: int


Value = EntitySet | Number


@dataclass(frozen=True)
class Call:
    tool: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Final:
    text: str  # what follows "Final Answer:", e.g. "#3"


def _clean(arg: str) -> str:
    """An argument without surrounding space, markdown, or a pair of quotes (names may end in one: Homyel')."""
    arg = arg.strip().strip(_DECOR)
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        arg = arg[1:-1].strip()
    return arg


def parse(action: str) -> Call | Final:
    """Read one action; raise :class:`InvalidAction` when it is not one.

    >>> parse("get_neighbors(Bonaire, Saint Eustatius and Saba, borders)")
    Call(tool='get_neighbors', args=('Bonaire, Saint Eustatius and Saba', 'borders'))
    >>> parse("Final Answer: #2")
    Final(text='#2')
    """
    text = action.strip()
    start = _FINAL_START.match(text)
    if start is not None:
        rest = text[(_FINAL.search(text) or start).end():].strip().lstrip(":").strip()
        return Final(rest.splitlines()[0].strip(_DECOR + ".'\"") if rest else "")
    line = next((ln for ln in text.splitlines() if ln.strip(_DECOR)), "").strip(_DECOR).rstrip(".;").strip(_DECOR)
    m = _CALL.match(line)
    if m is None:
        shown = line[:60] + ("..." if len(line) > 60 else "")
        raise InvalidAction(f"expected one tool call such as get_neighbors(France, borders), or Final Answer: #0; "
                            f"got {shown!r}")
    tool = _ALIASES.get(m.group(1).lower(), m.group(1).lower())
    if tool not in TOOLS:
        raise InvalidAction(f"unknown tool {m.group(1)!r}; the tools are {', '.join(TOOLS)}")
    inside = m.group(2)
    if tool == "get_neighbors":  # relation names have no commas, entity names may: split at the last one
        entity, comma, relation = inside.rpartition(",")
        if not comma:
            raise InvalidAction("get_neighbors takes two arguments: get_neighbors(entity or #k, relation)")
        args: tuple[str, ...] = (_clean(entity), _clean(relation))
    elif tool == "intersection":
        args = tuple(_clean(a) for a in inside.split(","))
        if len(args) != 2:
            raise InvalidAction("intersection takes two variables: intersection(#a, #b)")
    else:
        args = (_clean(inside),)
    if not all(args):
        raise InvalidAction(f"{tool} got an empty argument")
    return Call(tool, args)


def _names(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_PREVIEW])
    return shown + (f"; ... ({len(items) - MAX_PREVIEW} more)" if len(items) > MAX_PREVIEW else "")


def describe(index: int, value: Value) -> str:
    """How a new variable is shown: ``#1 = 2 languages: French; German``."""
    if isinstance(value, Number):
        return f"#{index} = {value.value} (a number)"
    n = len(value.members)
    noun = value.kind if n == 1 else PLURAL[value.kind]
    if n == 0:
        return f"#{index} = 0 {noun} (empty)"
    return f"#{index} = {n} {noun}: {_names(sorted(value.members))}"


class Session:
    """The variables of one episode and the tools that create them."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.variables: list[Value] = []

    # --- arguments ---------------------------------------------------------------------------------------------
    def variable(self, arg: str) -> Value:
        m = _VARIABLE.match(arg.replace(" ", ""))
        if m is None:
            raise InvalidAction(f"{arg!r} is not a variable; variables look like #0")
        i = int(m.group(1))
        if i >= len(self.variables):
            defined = ", ".join(f"#{k}" for k in range(len(self.variables))) or "none yet"
            raise InvalidAction(f"variable #{i} is not defined (defined: {defined})")
        return self.variables[i]

    def entity_set(self, arg: str, tool: str) -> tuple[str, EntitySet]:
        """An entity name or an entity variable as (how to call it in feedback, its set)."""
        if arg.startswith("#"):
            value = self.variable(arg)
            if isinstance(value, Number):
                raise InvalidAction(f"{arg} is a number, not a set of entities; {tool} needs entities")
            return f"{arg} ({PLURAL[value.kind]})", value
        name = self.graph.find(arg)
        if name is None:
            raise InvalidAction(f"unknown entity {arg[:MAX_NAME_CHARS]!r}{self._suggest(arg)}; use a name exactly "
                                "as the question lists it, or a variable")
        return f"{name} (a {self.graph.kind[name]})", EntitySet(self.graph.kind[name], frozenset([name]))

    def _suggest(self, arg: str) -> str:
        if len(arg) > MAX_NAME_CHARS:
            return ""
        by_norm = {norm(n): n for n in self.graph.kind}
        close = difflib.get_close_matches(norm(arg), list(by_norm), n=3, cutoff=0.75)
        return f" (did you mean: {', '.join(by_norm[c] for c in close)}?)" if close else ""

    def relations_of(self, s: EntitySet) -> list[str]:
        return sorted({r for e in s.members for r in self.graph.relations(e)})

    # --- tools -------------------------------------------------------------------------------------------------
    def run(self, call: Call) -> str:
        """Run a tool call and return the observation (raises :class:`InvalidAction`)."""
        if call.tool == "get_relations":
            label, s = self.entity_set(call.args[0], call.tool)
            relations = self.relations_of(s)
            return f"{label} has these relations: {', '.join(relations)}" if relations else f"{label} has no relations"
        if call.tool == "get_neighbors":
            label, s = self.entity_set(call.args[0], call.tool)
            relation = "_".join(call.args[1].lower().split())
            available = self.relations_of(s)
            if relation not in available:
                raise InvalidAction(f"{label} has no relation {call.args[1]!r}; its relations are: "
                                    f"{', '.join(available) or 'none'}")
            found = frozenset(n for e in s.members for n in self.graph.neighbors(e, relation))
            return self._store(EntitySet(RELATIONS[s.kind][relation][0], found))
        if call.tool == "intersection":
            sets = []
            for arg in call.args:
                if not arg.startswith("#"):
                    raise InvalidAction(f"intersection takes two variables such as #0, #1, not {arg[:40]!r}")
                sets.append(self.entity_set(arg, call.tool)[1])
            a, b = sets
            if a.kind != b.kind:
                raise InvalidAction(f"cannot intersect {PLURAL[a.kind]} ({call.args[0]}) with {PLURAL[b.kind]} "
                                    f"({call.args[1]})")
            return self._store(EntitySet(a.kind, a.members & b.members))
        assert call.tool == "count"
        if not call.args[0].startswith("#"):
            raise InvalidAction(f"count takes a variable such as #0, not {call.args[0][:40]!r}")
        return self._store(Number(len(self.entity_set(call.args[0], call.tool)[1].members)))

    def _store(self, value: Value) -> str:
        self.variables.append(value)
        return describe(len(self.variables) - 1, value)

    def final(self, final: Final) -> Value:
        """The value a ``Final Answer`` names: a defined variable or a plain integer (else :class:`InvalidAction`)."""
        text = final.text.strip()
        if text.startswith("#"):
            return self.variable(text)
        if _INTEGER.match(text):
            return Number(int(text))
        raise InvalidAction(f"the final answer must be the variable that holds the answer, such as "
                            f"'Final Answer: #{max(len(self.variables) - 1, 0)}'; got {text[:40]!r}")
