"""The ``sciworld`` tasks: (ScienceWorld task, variation) pairs drawn from ScienceWorld's own train and test variation
lists, and the payload an episode reads.

ScienceWorld has 30 task types, each with 10 to 1386 variations (different substances, animals, rooms), split by
ScienceWorld itself into train, dev and test variations (1,819 test variations in all). Its task types differ
widely in length: the gold action sequences of the find, lifespan, circuit, conductivity, mixing and thermometer
tasks take 4 to about 56 actions, those of boiling, freezing, growing, inclined planes and genetics 42 to 261
(measured on scienceworld 1.2.3, the version the ``sciworld`` extra pins). The family's turn budget is the
30 turns AgentGym (``max_round`` 30) and AgentBoard (``max_num_steps`` 30) give a SciWorld episode, so only
:data:`TASK_TYPES`, the types whose gold paths fit it, are used, and a test variation whose gold path is longer than
:data:`GOLD_LIMIT` is passed over for the next one: every test task can be won within the budget with room to spare
(the gold path is replayed to be sure: :func:`verified_gold`).

From each type, :data:`PER_TYPE` variations are taken in the order of SHA-256 of (split, type, variation): a fixed
choice, the same on every machine, spread over the whole list rather than its first entries. Listing the tasks needs
the simulator (the variation lists and task descriptions live in its jar), about 10 s the first time; the result is
cached under ``$AGENTTUNING_CACHE/sciworld`` (default ``~/.cache/agenttuning/sciworld``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from agenttuning.envs.sciworld.jvm import Simulator

# the task types whose gold paths fit the 30-turn budget (gold lengths on scienceworld 1.2.3: the smallest and largest
# seen over 8 test variations each); the other 14 types need 29 to 261 actions (their shortest
# gold paths: 18 to 79). Left out as well: chemistry-mix-paint-tertiary-color (13-40), whose gold paths name two
# bowls alike ("pour bowl in bowl"), which one JVM resolves as the path means and another as one bowl into itself,
# and test-conductivity / test-conductivity-of-unknown-substances (15-33, 21-43), whose gold paths failed now and
# then on the episode's JVM in the same way (3 of 45 test tasks in one `agenttuning check` run)
TASK_TYPES: tuple[str, ...] = (
    "chemistry-mix",  # 19-56
    "chemistry-mix-paint-secondary-color",  # 7-33
    "find-animal",  # 12-16
    "find-living-thing",  # 12-16
    "find-non-living-thing",  # 7-11
    "find-plant",  # 8-14
    "identify-life-stages-2",  # 12-17
    "lifespan-longest-lived",  # 4-8
    "lifespan-longest-lived-then-shortest-lived",  # 5-9
    "lifespan-shortest-lived",  # 4-8
    "power-component",  # 9-15
    "power-component-renewable-vs-nonrenewable-energy",  # 11-30
    "use-thermometer",  # 14-24
)
GOLD_LIMIT = 25  # a test variation's gold path may take at most this many of the 30 turns
GOLD_TRIES = 5  # gold paths generated per game, at most, to find one that wins within GOLD_LIMIT (see verified_gold)
PER_TYPE = {"train": 10, "test": 3}
_DERIVATION = 5  # bump when the selection rule changes (it keys the cache)


class SciworldPayload(BaseModel):
    """One ScienceWorld game: the task type and the variation (ScienceWorld's index)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_name: str = Field(description="ScienceWorld's task name, e.g. 'find-animal'")
    variation: int = Field(ge=0, description="ScienceWorld's variation index of the task")
    gold_steps: int | None = Field(None, ge=1, description="length of the gold path when the task was derived "
                                                           "(test tasks; the expert regenerates the path itself)")


def cache_dir() -> Path:
    """``$AGENTTUNING_CACHE/sciworld`` (default ``~/.cache/agenttuning/sciworld``)."""
    base = os.environ.get("AGENTTUNING_CACHE") or Path.home() / ".cache" / "agenttuning"
    return Path(base) / "sciworld"


def _rank(split: str, task_name: str, variation: int) -> str:
    return hashlib.sha256(f"sciworld|{split}|{task_name}|{variation}".encode()).hexdigest()


def instruction(description: str, task_name: str, variation: int) -> str:
    """The task as listed: ScienceWorld's description, then which game it is (two variations of a type can share a
    description, e.g. the lifespan tasks, whose animals differ by room only)."""
    return f"{description.strip()} (ScienceWorld {task_name}, variation {variation})"


def verified_gold(sim: Simulator, task_name: str, variation: int, limit: int = GOLD_LIMIT,
                  tries: int = GOLD_TRIES) -> list[str] | None:
    """A gold action sequence for the game that wins it within ``limit`` commands, replayed on ``sim`` to be sure;
    None if ``tries`` generations give none.

    ScienceWorld's gold-path generator is not deterministic: the same game gives paths that open containers in
    another order or take a detour through other rooms (25 or 33 commands for one conductivity game), and now and
    then one that does not win (an object named in a way the parser then refuses). So a path is generated, replayed
    from the start on a fresh load of the game, and kept only if it completes the task in time."""
    for _ in range(tries):
        sim.load(task_name, variation, gold=True)
        path = sim.gold()
        if not path or len(path) > limit:
            continue
        sim.load(task_name, variation)
        sim.reset()
        for command in path:
            _, score, completed = sim.step(command)
            if score < 0:
                break
            if completed:
                # kept whole: the step that completes the task can differ by a tick between JVMs (the order in
                # which the simulator updates objects is not fixed), and the path's trailing waits cover that
                return path
    return None


def derive(per_type: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Every task of both splits as plain records (payload and instruction), read from the simulator, cached on disk.

    Raises :class:`RuntimeError` when the simulator cannot run (say why: :func:`jvm.unavailable_reason`)."""
    from agenttuning.envs.sciworld import jvm

    per_type = per_type or PER_TYPE
    import scienceworld

    key = hashlib.sha256(json.dumps([_DERIVATION, scienceworld.__version__, TASK_TYPES, GOLD_LIMIT,
                                     sorted(per_type.items())]).encode()).hexdigest()[:16]
    path = cache_dir() / f"tasks-{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache file is derived again and replaced
    reason = jvm.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"sciworld cannot list its tasks: {reason}")
    out: dict[str, list[dict]] = {"train": [], "test": []}
    sim = jvm.acquire()
    try:
        known = set(sim.task_names())
        missing = [t for t in TASK_TYPES if t not in known]
        if missing:
            raise RuntimeError(f"scienceworld {scienceworld.__version__} lacks the task types {missing}")
        for task_name in TASK_TYPES:
            sim.load(task_name, 0)
            for split in ("train", "test"):
                ordered = sorted(sim.variations(split), key=lambda v: _rank(split, task_name, v))
                picked = 0
                for v in ordered:
                    if picked == per_type[split]:
                        break
                    gold = None
                    if split == "test":
                        winning = verified_gold(sim, task_name, v)
                        if winning is None:
                            continue  # no winning path within the limit: the next variation
                        gold = len(winning)
                    sim.load(task_name, v)
                    out[split].append({"task_name": task_name, "variation": v, "gold_steps": gold,
                                       "instruction": instruction(sim.task_description(), task_name, v)})
                    picked += 1
    finally:
        jvm.release(sim)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(out, f)
    os.replace(f.name, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return out
