"""Self-instruct for the ``household`` environment: a teacher writes small games as data; a game is kept only if it
builds and its walkthrough wins it in the real engine.

The family-specific half of :mod:`agenttuning.stages.instruct` (which calls the teacher, then plays the expert and
the wrong answer through the real environment, and deduplicates). A draft (:class:`HouseholdDraft`) is an
instruction, a world (rooms and exits, objects, the start room, the goal facts: :mod:`.spec`) and a walkthrough.

- :func:`instruct_prompt`: the spec format, its rules and one worked example (the family's cooking tasks are no
  example of a spec, so ``seeds`` are not shown).
- :func:`read_drafts`: the shared strict reader (``json.loads`` only, bounded reply, exact model), with the list
  sizes capped like text fields (:data:`CAPS`): a spec with too many rooms, objects, goal facts or commands is
  ``too_long``.
- :func:`draft_task`: the checks of :func:`.spec.spec_problem` (``inconsistent``, ``unreachable``,
  ``goal_already_met``), then building the game with TextWorld's ``GameMaker`` into the family's cache
  (``build_failed``), then the walkthrough in an episode of :class:`~.env.HouseholdEnv` itself: every command must be
  an available one and the last must win (``walkthrough_fails``; commands after the win are dropped). A goal that
  holds at the start is caught by the spec check alone: TextWorld never declares such a game won (measured: not
  after ``look``, nor after dropping and retaking an object the goal wants held), so no walkthrough would win it.

A kept draft becomes a task with a :class:`~.games.SpecPayload`, id ``household-instruct-<sha256[:16]>`` of the
instruction and payload, split ``train``.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agenttuning.envs.household.games import MAX_COMMAND_CHARS, MAX_WALKTHROUGH, SpecPayload, ensure_game
from agenttuning.envs.household.spec import (MAX_GOALS, OPPOSITE, Goal, Name, Room, Thing, WorldSpec, links,
                                              spec_problem)
from agenttuning.envs.instruct import MAX_REPLY_CHARS, Rejected
from agenttuning.envs.instruct import read_drafts as shared_read_drafts
from agenttuning.schema import Task, Turn

if TYPE_CHECKING:
    from agenttuning.envs.household.definition import HouseholdDefinition

__all__ = ["CAPS", "MAX_REPLY_CHARS", "REASONS", "Draft", "HouseholdDraft", "Rejected", "draft_task",
           "instruct_prompt", "read_drafts", "solution_key"]

MAX_INSTRUCTION_CHARS = 400
MAX_ROOMS = 6
MAX_OBJECTS = 12
CAPS = {"instruction": MAX_INSTRUCTION_CHARS, "rooms": MAX_ROOMS, "objects": MAX_OBJECTS, "goal": MAX_GOALS,
        "walkthrough": MAX_WALKTHROUGH}
#: what :func:`draft_task` can reject a draft for, in the order it checks
REASONS = ("inconsistent", "unreachable", "goal_already_met", "build_failed", "walkthrough_fails")

Command = Annotated[str, StringConstraints(pattern=r"^[a-z]+( [a-z]+)*$", max_length=MAX_COMMAND_CHARS)]


class HouseholdDraft(BaseModel):
    """One task as the teacher writes it: the instruction, the world (as :class:`~.spec.WorldSpec`) and the
    commands that win it. Strict: unknown keys and wrong types fail; list sizes are bounded by :data:`CAPS`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    instruction: str = Field(min_length=1)
    rooms: list[Room] = Field(min_length=1)
    start: Name
    objects: list[Thing] = Field(default_factory=list)
    goal: list[Goal] = Field(min_length=1)
    walkthrough: list[Command] = Field(min_length=1)

    def world(self) -> WorldSpec:
        return WorldSpec(rooms=self.rooms, start=self.start, objects=self.objects, goal=self.goal)


Draft = HouseholdDraft  # the name the stage reads

_EXAMPLE = {
    "instruction": "Put the red mug in the wooden chest in the hallway, then eat the green apple.",
    "rooms": [{"name": "kitchen", "exits": {"north": "hallway"}}, {"name": "hallway", "exits": {}}],
    "start": "kitchen",
    "objects": [
        {"name": "oak table", "type": "supporter", "location": "kitchen"},
        {"name": "red mug", "type": "object", "location": "oak table"},
        {"name": "brass key", "type": "key", "location": "kitchen"},
        {"name": "wooden chest", "type": "container", "location": "hallway", "state": "locked", "key": "brass key"},
        {"name": "green apple", "type": "food", "location": "wooden chest"},
    ],
    "goal": [{"relation": "in", "object": "red mug", "target": "wooden chest"},
             {"relation": "eaten", "object": "green apple"}],
    "walkthrough": ["take brass key", "take red mug from oak table", "go north", "unlock wooden chest with brass key",
                    "open wooden chest", "take green apple from wooden chest", "eat green apple",
                    "insert red mug into wooden chest"],
}


def instruct_prompt(definition: HouseholdDefinition, seeds: list[Task], k: int) -> list[Turn]:
    """The messages asking the teacher for ``k`` new games (``seeds``, cooking games, are not examples of a spec)."""
    system = ("You write small text-adventure games for an agent environment, as JSON. Each game is built and its "
              "walkthrough is played in the real game engine; a game that does not build or whose walkthrough does "
              "not win is thrown away.")
    user = f"""Environment: {definition.description}
Games are built with TextWorld. The agent plays one command at a time, choosing among the available commands.

Task format: a JSON object with exactly these keys:
- "instruction": what the player must do, in plain English (at most {MAX_INSTRUCTION_CHARS} characters).
- "rooms": 1 to {MAX_ROOMS} rooms, each {{"name": ..., "exits": {{"north"|"south"|"east"|"west": room name}}}}. \
The way back is implied (kitchen north -> hallway means hallway south -> kitchen).
- "start": the room the player starts in.
- "objects": up to {MAX_OBJECTS} objects, each {{"name", "type", "location"}}. type: "object", "food" or "key" \
(can be carried; location: a room, a container, a supporter or "inventory"), "container" or "supporter" (furniture; \
location: a room). A container also has "state": "open", "closed" or "locked"; a locked one names its "key" (a key \
object).
- "goal": 1 to {MAX_GOALS} facts that must all hold to win, each {{"relation", "object"?, "target"?}}: "in" (object \
in container), "on" (object on supporter), "held" (object carried), "eaten" (a food), "open" (a container), "at" \
(target: a room the player must be in). The goal must not hold at the start.
- "walkthrough": the commands that win, in the game's words: "go north", "take X", "take X from Y", "open X", \
"unlock X with K", "insert X into Y", "put X on Y", "eat X", "drop X" (at most {MAX_WALKTHROUGH}).
Names are 1 to 3 lower-case words of letters only, all different; no name may use a command word or direction.

Example:
{json.dumps(_EXAMPLE)}

Write {k} new games, different from the example and from each other (other rooms, objects and goals). Reply with a \
JSON array of {k} task objects and nothing else."""
    return [Turn(role="system", content=system), Turn(role="user", content=user)]


def read_drafts(text: str, limit: int) -> tuple[list[HouseholdDraft | Rejected], Rejected | None]:
    """The teacher's reply as drafts (:func:`agenttuning.envs.instruct.read_drafts` with :class:`HouseholdDraft`)."""
    return shared_read_drafts(text, limit, HouseholdDraft, CAPS)


def _bad_text(text: str) -> str | None:
    """A NUL, another control character or a lone surrogate (valid JSON escapes, but no instruction has them)."""
    for c in text:
        if (ord(c) < 32 and c not in "\n\t") or 0xD800 <= ord(c) <= 0xDFFF:
            return f"the instruction holds the character U+{ord(c):04X}"
    return None


def _episode(definition: HouseholdDefinition, task: Task, commands: list[str]) -> tuple[int, str]:
    """Play ``commands`` in a fresh episode of the real environment: ``(i, "won")`` when command ``i`` wins the
    game, else ``(i, why)``: command ``i`` was not available, or lost the game, or the commands ran out."""
    env = definition.make()
    try:
        env.reset(task)
        for i, command in enumerate(commands, 1):
            r = env.step(command)
            if r.invalid:
                return i, f"command {i} {command!r} is not available: {r.info.get('reason', '')}"[:200]
            if r.terminated or r.truncated:
                return (i, "won") if r.reward >= 1.0 else (i, f"command {i} {command!r} ended the game lost")
        return len(commands), f"all {len(commands)} commands played without winning"
    finally:
        env.close()


def draft_task(definition: HouseholdDefinition, draft: HouseholdDraft) -> Task | Rejected:
    """The task a draft makes once its game is built and its walkthrough wins it (see the module docs), or why not."""
    bad = _bad_text(draft.instruction)
    if bad:
        return Rejected(reason="unparsable", detail=bad)
    world = draft.world()
    problem = spec_problem(world)
    if problem:
        return Rejected(reason=problem[0], detail=problem[1])
    payload = SpecPayload(kind="spec", spec=world, walkthrough=list(draft.walkthrough))
    try:
        ensure_game(payload, definition.cache_dir)
    except (RuntimeError, ValueError, OSError) as e:
        return Rejected(reason="build_failed", detail=str(e)[-300:])

    def task_of(p: SpecPayload) -> Task:
        blob = json.dumps({"instruction": draft.instruction, "payload": p.model_dump(mode="json")}, sort_keys=True,
                          ensure_ascii=False)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return Task(id=f"household-instruct-{digest}", env=definition.id, split="train",
                    instruction=draft.instruction, payload=p.model_dump(mode="json"))

    task = task_of(payload)
    n, outcome = _episode(definition, task, list(draft.walkthrough))
    if outcome != "won":
        return Rejected(reason="walkthrough_fails", detail=outcome)
    if n < len(draft.walkthrough):  # won before its end: the rest would never be played
        task = task_of(payload.model_copy(update={"walkthrough": list(draft.walkthrough[:n])}))
    return task


def _normalised_world(spec: WorldSpec) -> dict[str, Any]:
    """The world with every list in a fixed order and every exit in both directions: two specs of the same world
    written in another order are equal here."""
    both = sorted({(a, d, b) for a, d, b in links(spec)[0]} | {(b, OPPOSITE[d], a) for a, d, b in links(spec)[0]})
    return {"rooms": sorted(r.name for r in spec.rooms), "exits": both, "start": spec.start,
            "objects": sorted(json.dumps(t.model_dump(mode="json"), sort_keys=True) for t in spec.objects),
            "goal": sorted(json.dumps(g.model_dump(mode="json"), sort_keys=True) for g in spec.goal)}


def solution_key(task: Task) -> str:
    """Two tasks with the same key ask for the same thing: for a spec game, its world and goal normalised (the
    wording and the walkthrough do not matter); for a cooking game, its cache key (nothing is generated)."""
    p = task.payload
    if p.get("kind") == "spec":
        world = WorldSpec.model_validate(p["spec"])
        return "spec:" + json.dumps(_normalised_world(world), sort_keys=True, separators=(",", ":"))
    return "cooking:" + json.dumps(p, sort_keys=True, separators=(",", ":"))
