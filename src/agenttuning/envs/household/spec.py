"""A household game written as data (a *game spec*): rooms, objects, a goal; its checks; and building it in TextWorld.

Self-instructed household tasks (:mod:`.instruct`) are games a teacher writes as JSON rather than cooking games
drawn from a seed. A spec names rooms and their exits (north, south, east, west: the only directions TextWorld's
rooms have), objects with a type and a location, the room the player starts in, and a goal: one to
:data:`MAX_GOALS` facts that must all hold at once (an object in a container or on a supporter, an object held, a
food eaten, a container open, the player in a room). :func:`spec_problem` says why a spec cannot be a game
(inconsistent references, an unreachable goal, a goal already met) before anything is built;
:func:`build_game` makes the game with TextWorld's ``GameMaker`` (the goal becomes the quest's win condition) and
compiles it to ``game.z8``. Building runs in a child process (:mod:`.spec_build`, from
:func:`agenttuning.envs.household.games.ensure_game`) with ``PYTHONHASHSEED=0`` and fixed generator seeds, so the
files are byte-identical across runs, and a teacher's spec that hangs or crashes the compiler only fails that child.

Names are lower-case words (``[a-z]``, single spaces): they become Inform 7 source text when the game is compiled,
so nothing a teacher writes reaches the compiler except such words (the task's instruction never does: the episode
shows it in Python).
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

DIRECTIONS = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
MAX_GOALS = 4
INVENTORY = "inventory"  # an object's location: the player starts holding it
SPEC_FILE = "spec.json"  # the world spec the child process builds, kept beside the game
# words that are commands, directions or the parser's own pronouns: a name with one would make commands ambiguous
RESERVED = frozenset({*DIRECTIONS, INVENTORY, "all", "it", "them", "me", "myself", "you", "player", "self", "room",
                      "door", "exit", "look", "go", "take", "drop", "put", "insert", "open", "close", "lock", "unlock",
                      "eat", "examine", "from", "into", "on", "in", "with", "the", "a", "an", "and", "nothing"})

# lower-case words with single spaces, 2 to 30 characters: safe as Inform 7 source and as a parser noun
Name = Annotated[str, StringConstraints(pattern=r"^[a-z]+( [a-z]+){0,2}$", min_length=2, max_length=30)]
ObjectType = Literal["object", "food", "key", "container", "supporter"]
_TW_TYPE = {"object": "o", "food": "f", "key": "k", "container": "c", "supporter": "s"}
PORTABLE = ("object", "food", "key")


class Room(BaseModel):
    """A room and its exits: ``{"north": "hallway"}``. An exit needs no mirror entry: the way back is implied."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name
    exits: dict[Literal["north", "south", "east", "west"], Name] = Field(default_factory=dict)


class Thing(BaseModel):
    """An object in the world. ``location``: a room, a container or supporter (for a portable object, i.e. an
    object, food or key), or ``"inventory"``. A container is ``open``, ``closed`` or ``locked``; a locked one names
    its ``key`` (a key object)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name
    type: ObjectType
    location: Name
    state: Literal["open", "closed", "locked"] | None = None
    key: Name | None = None


class Goal(BaseModel):
    """One fact the win needs: ``in`` (object in container), ``on`` (object on supporter), ``held`` (object in the
    inventory), ``eaten`` (a food), ``open`` (a container), ``at`` (the player in room ``target``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    relation: Literal["in", "on", "held", "eaten", "open", "at"]
    object: Name | None = None
    target: Name | None = None


class WorldSpec(BaseModel):
    """Everything the game file is built from (the instruction and the walkthrough are not: the same world built
    for two wordings shares one cached game)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rooms: list[Room] = Field(min_length=1)
    start: Name
    objects: list[Thing] = Field(default_factory=list)
    goal: list[Goal] = Field(min_length=1, max_length=MAX_GOALS)

    def canonical(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces): what its content hash and the child read."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def links(spec: WorldSpec) -> tuple[list[tuple[str, str, str]], str | None]:
    """Every connection once, as ``(room, direction, other room)``, with each room's exits completed by the implied
    way back; or a problem: an exit to an unknown room or to itself, two exits that disagree, or two ways between
    the same rooms (a map TextWorld's rooms cannot lay out on a grid)."""
    names = {r.name for r in spec.rooms}
    used: dict[tuple[str, str], str] = {}  # (room, direction) -> destination
    out: list[tuple[str, str, str]] = []
    for room in spec.rooms:
        for direction, dest in room.exits.items():
            if dest not in names:
                return [], f"room {room.name!r}: exit {direction} leads to unknown room {dest!r}"
            if dest == room.name:
                return [], f"room {room.name!r}: exit {direction} leads to itself"
            back = OPPOSITE[direction]
            for key, want in (((room.name, direction), dest), ((dest, back), room.name)):
                if used.get(key, want) != want:
                    return [], f"room {key[0]!r}: exit {key[1]} leads to both {used[key]!r} and {want!r}"
            if (room.name, direction) not in used:
                if any({a, b} == {room.name, dest} for a, _, b in out):  # a second way between the same two rooms
                    return [], f"rooms {room.name!r} and {dest!r} are joined by two exits"
                out.append((room.name, direction, dest))
            used[(room.name, direction)] = dest
            used[(dest, back)] = room.name
    return out, None


def _inconsistency(spec: WorldSpec) -> str | None:
    """Unknown or duplicate names, objects of the wrong type for where they are or what the goal asks of them."""
    rooms = {r.name for r in spec.rooms}
    things = {t.name: t for t in spec.objects}
    names = [r.name for r in spec.rooms] + [t.name for t in spec.objects]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return f"duplicate names: {dup}"
    reserved = sorted(n for n in names if set(n.split()) & RESERVED)
    if reserved:
        return f"names with a reserved word (a command, direction or pronoun): {reserved}"
    if spec.start not in rooms:
        return f"start {spec.start!r} is not a room"
    _, problem = links(spec)
    if problem:
        return problem
    for t in spec.objects:
        where = things.get(t.location)
        if t.type in PORTABLE:
            if not (t.location in rooms or t.location == INVENTORY or (where and where.type in ("container",
                                                                                               "supporter"))):
                return f"object {t.name!r}: location {t.location!r} is not a room, container, supporter or inventory"
        elif t.location not in rooms:
            return f"{t.type} {t.name!r}: location {t.location!r} is not a room (furniture stands in a room)"
        if t.type == "container":
            if t.state is None:
                return f"container {t.name!r} has no state (open, closed or locked)"
            if (t.state == "locked") != (t.key is not None):
                return f"container {t.name!r}: a key is named exactly when it is locked"
            if t.key is not None and (t.key not in things or things[t.key].type != "key"):
                return f"container {t.name!r}: its key {t.key!r} is not a key object"
        elif t.state is not None or t.key is not None:
            return f"{t.type} {t.name!r}: only a container has a state or key"
    need = {"in": ("portable", "container"), "on": ("portable", "supporter"), "held": ("portable", None),
            "eaten": ("food", None), "open": ("container", None), "at": (None, "room")}
    for i, g in enumerate(spec.goal):
        want_obj, want_target = need[g.relation]
        if (g.object is None) != (want_obj is None) or (g.target is None) != (want_target is None):
            return f"goal {i} ({g.relation}): needs {'an object' if want_obj else 'no object'} and " \
                   f"{'a target' if want_target else 'no target'}"
        if g.object is not None:
            t = things.get(g.object)
            ok = t is not None and (t.type in PORTABLE if want_obj == "portable" else t.type == want_obj)
            if not ok:
                return f"goal {i} ({g.relation}): {g.object!r} is not a known {want_obj} object"
        if g.target is not None:
            ok = g.target in rooms if want_target == "room" else (
                g.target in things and things[g.target].type == want_target)
            if not ok:
                return f"goal {i} ({g.relation}): target {g.target!r} is not a known {want_target}"
    goals = [(g.relation, g.object, g.target) for g in spec.goal]
    if len(set(goals)) != len(goals):
        return "the goal lists a fact twice"
    placed = [g.object for g in spec.goal if g.relation in ("in", "on", "held", "eaten")]
    if len(set(placed)) != len(placed):
        return "the goal puts one object in two places (or eats one it also places)"
    return None


def _room_of(spec: WorldSpec, name: str) -> str:
    """The room an object is in, through containers and supporters (``inventory`` for what the player holds)."""
    things = {t.name: t for t in spec.objects}
    while name in things:
        name = things[name].location
    return name


def _unreachable(spec: WorldSpec) -> str | None:
    """A goal object or target the player cannot get to: in a room no path from the start leads to, or inside a
    locked container whose key is missing from every reachable place (or locked inside that very container)."""
    adjacent: dict[str, set[str]] = {r.name: set() for r in spec.rooms}
    for a, _, b in links(spec)[0]:
        adjacent[a].add(b)
        adjacent[b].add(a)
    seen, todo = {spec.start}, deque([spec.start])
    while todo:
        for nxt in adjacent[todo.popleft()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    seen.add(INVENTORY)
    things = {t.name: t for t in spec.objects}

    def blocked(name: str, opening: tuple[str, ...] = ()) -> str | None:
        """Why ``name`` cannot be reached, or None; ``opening``: the locked containers whose keys are being sought
        (a key found inside one of them is locked inside itself)."""
        room = _room_of(spec, name)
        if room not in seen:
            return f"{name!r} is in room {room!r}, which no path from {spec.start!r} leads to"
        holder: str | None = name  # the thing itself (a locked container in the goal needs its key too), then up
        while holder in things:
            box = things[holder]
            if box.state == "locked":
                if box.name in opening:
                    return f"the key of {box.name!r} is locked inside it"
                why = blocked(box.key, opening + (box.name,))  # type: ignore[arg-type]
                if why:
                    return f"{name!r} needs the locked {box.name!r} opened: {why}"
            holder = box.location
        return None

    for g in spec.goal:
        for name in (g.object, g.target):
            why = blocked(name) if name is not None else None
            if why:
                return why
    return None


def _already_met(spec: WorldSpec) -> bool:
    """Whether every goal fact holds in the starting world (doing nothing would win)."""
    things = {t.name: t for t in spec.objects}

    def holds(g: Goal) -> bool:
        if g.relation in ("in", "on"):
            return things[g.object].location == g.target  # type: ignore[index]
        if g.relation == "held":
            return things[g.object].location == INVENTORY  # type: ignore[index]
        if g.relation == "open":
            return things[g.object].state == "open"  # type: ignore[index]
        if g.relation == "at":
            return g.target == spec.start
        return False  # nothing starts eaten

    return all(holds(g) for g in spec.goal)


def spec_problem(spec: WorldSpec) -> tuple[str, str] | None:
    """``(reason, detail)`` when the spec cannot be a fair game, else None: ``inconsistent``, ``unreachable`` or
    ``goal_already_met`` (the reasons :mod:`.instruct` counts), checked in that order."""
    why = _inconsistency(spec)
    if why:
        return "inconsistent", why
    why = _unreachable(spec)
    if why:
        return "unreachable", why
    if _already_met(spec):
        return "goal_already_met", "every goal fact holds at the start: doing nothing would win"
    return None


def build_game(spec: WorldSpec, path: str = "./game.z8") -> str:
    """Make the game with TextWorld's ``GameMaker`` and compile it to ``path`` (with ``game.json`` and ``game.ni``
    beside it). Run this in a child process with ``PYTHONHASHSEED=0`` (see the module docs)."""
    from textworld import GameMaker, GameOptions
    from textworld.generator.game import Event, Quest
    from textworld.logic import Proposition

    problem = spec_problem(spec)
    if problem:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    options = GameOptions()
    options.seeds = 0  # the grammar's descriptions are drawn from these: fixed, so the game is the spec's alone
    maker = GameMaker(options)
    rooms = {r.name: maker.new_room(r.name) for r in spec.rooms}
    for a, direction, b in links(spec)[0]:
        maker.connect(getattr(rooms[a], direction), getattr(rooms[b], OPPOSITE[direction]))
    maker.set_player(rooms[spec.start])
    # furniture first: a portable object's location may be a container or supporter
    ordered = sorted(spec.objects, key=lambda t: t.type in PORTABLE)
    entities = {t.name: maker.new(type=_TW_TYPE[t.type], name=t.name) for t in ordered}
    for t in ordered:
        holder = maker.inventory if t.location == INVENTORY else rooms.get(t.location) or entities[t.location]
        holder.add(entities[t.name])
        if t.state is not None:
            entities[t.name].add_property(t.state)
        if t.key is not None:
            maker.add_fact("match", entities[t.key], entities[t.name])
    facts = set()
    for g in spec.goal:
        obj = entities[g.object].var if g.object else None
        if g.relation in ("in", "on"):
            facts.add(Proposition(g.relation, [obj, entities[g.target].var]))  # type: ignore[index]
        elif g.relation == "held":
            facts.add(Proposition("in", [obj, maker.inventory.var]))
        elif g.relation in ("eaten", "open"):
            facts.add(Proposition(g.relation, [obj]))
        else:
            facts.add(Proposition("at", [maker.player.var, rooms[g.target].var]))  # type: ignore[index]
    maker.quests = [Quest(win_events=[Event(conditions=facts)])]
    return maker.compile(path)


_WORDS = re.compile(r"^(go|take|drop|open|close|unlock|lock|eat|put|insert)\b\s*(.*)$")


def spec_thought(command: str) -> str:
    """A short, true reason for one walkthrough command of a spec game (the expert's Thought).

    >>> spec_thought("unlock wooden chest with brass key")
    'The wooden chest is locked; I unlock it with the brass key.'
    """
    m = _WORDS.match(command)
    verb, rest = (m[1], m[2]) if m else ("", command)
    if verb == "go":
        return f"What the task needs is elsewhere; I go {rest}."
    if verb == "take":
        return f"The task needs the {rest.split(' from ')[0]}, so I take it."
    if verb == "unlock" and " with " in rest:
        box, key = rest.split(" with ", 1)
        return f"The {box} is locked; I unlock it with the {key}."
    if verb == "open":
        return f"The {rest} is closed; I open it."
    if verb in ("put", "insert"):
        what, _, where = rest.partition(" on " if verb == "put" else " into ")
        return f"The task wants the {what} {'on' if verb == 'put' else 'in'} the {where}; I put it there."
    if verb == "eat":
        return f"The task says to eat the {rest}, so I eat it."
    if verb == "drop":
        return f"I drop the {rest} here."
    return f"Next step of my plan: {command}."
