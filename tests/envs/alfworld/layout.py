"""Tiny ALFWorld data folders of our own, laid out as ``alfworld-download`` lays out the real one.

Every file here is written by these tests: ``traj_data.json`` holds only the field the loader reads (``task_type``),
and each ``game.tw-pddl`` is built the way ``alfworld-generate`` builds one, from the PDDL domain and text grammar
that ship inside the ``alfworld`` wheel (the goal written into the grammar) and a PDDL problem of our own: one room
with a countertop, a fridge, a dining table, a sink basin, a microwave and a side table; an apple and a mug on the
countertop, a desk lamp on the side table. Without the ``alfworld`` package the games carry a stand-in domain, enough
for the layout scanner (which never runs a game).
"""

from __future__ import annotations

import json
from pathlib import Path

RECEPTACLES = {  # receptacle id -> (location, type); the agent starts at loc_bar_0
    "CounterTop_bar_1": ("loc_bar_1", "CounterTop"),
    "Fridge_bar_1": ("loc_bar_2", "Fridge"),
    "DiningTable_bar_1": ("loc_bar_3", "DiningTable"),
    "Sink_bar_1_bar_SinkBasin": ("loc_bar_4", "SinkBasin"),  # named as ALFRED names sink basins
    "Microwave_bar_1": ("loc_bar_5", "Microwave"),
    "SideTable_bar_1": ("loc_bar_6", "SideTable"),
}
OBJECTS = {  # object id -> (type, receptacle, its properties)
    "Apple_bar_1": ("Apple", "CounterTop_bar_1", ("pickupable", "coolable", "heatable", "cleanable")),
    "Mug_bar_1": ("Mug", "CounterTop_bar_1", ("pickupable", "coolable", "heatable", "cleanable")),
    "DeskLamp_bar_1": ("DeskLamp", "SideTable_bar_1", ("toggleable",)),
}


def _exists(*conds: str) -> str:
    return "(exists (?o - object ?r - receptacle) (and " + " ".join(conds) + "))"


# task type -> (goal sentence, PDDL goal): the six of ALFWorld, on our room
GOALS = {
    "pick_and_place_simple": ("put some apple in fridge",
                              _exists("(objectType ?o AppleType)", "(receptacleType ?r FridgeType)",
                                      "(inReceptacle ?o ?r)")),
    "pick_cool_then_place_in_recep": ("put a cool apple in diningtable",
                                      _exists("(objectType ?o AppleType)", "(receptacleType ?r DiningTableType)",
                                              "(isCool ?o)", "(inReceptacle ?o ?r)")),
    "pick_heat_then_place_in_recep": ("put a hot mug in diningtable",
                                      _exists("(objectType ?o MugType)", "(receptacleType ?r DiningTableType)",
                                              "(isHot ?o)", "(inReceptacle ?o ?r)")),
    "pick_clean_then_place_in_recep": ("put a clean mug in fridge",
                                       _exists("(objectType ?o MugType)", "(receptacleType ?r FridgeType)",
                                               "(isClean ?o)", "(inReceptacle ?o ?r)")),
    "look_at_obj_in_light": ("look at mug under the desklamp",
                             "(and (exists (?ot - object ?r - receptacle ?a - agent ?l - location) (and "
                             "(objectType ?ot DeskLampType) (toggleable ?ot) (isToggled ?ot) "
                             "(receptacleAtLocation ?r ?l) (atLocation ?a ?l) (inReceptacle ?ot ?r))) "
                             "(exists (?o - object ?a - agent) (and "
                             "(objectType ?o MugType) (holds ?a ?o))))"),
    "pick_two_obj_and_place": ("put two things in diningtable",
                               "(exists (?o1 - object ?o2 - object ?r - receptacle) (and (not (= ?o1 ?o2)) "
                               "(receptacleType ?r DiningTableType) (inReceptacle ?o1 ?r) (inReceptacle ?o2 ?r) "
                               "(pickupable ?o1) (pickupable ?o2)))"),
}


def problem(goal: str) -> str:
    """The PDDL problem of our room with ``goal``."""
    otypes = sorted({t for t, _, _ in OBJECTS.values()})
    rtypes = sorted({t for _, t in RECEPTACLES.values()})
    locations = ["loc_bar_0"] + [loc for loc, _ in RECEPTACLES.values()]
    objects = (["agent1 - agent"] + [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
               + [f"{o} - object" for o in OBJECTS] + [f"{r} - receptacle" for r in RECEPTACLES]
               + [f"{loc} - location" for loc in locations])
    init = ["(atLocation agent1 loc_bar_0)", "(openable Fridge_bar_1)", "(openable Microwave_bar_1)"]
    for r, (loc, t) in RECEPTACLES.items():
        init += [f"(receptacleType {r} {t}Type)", f"(receptacleAtLocation {r} {loc})"]
        init += [f"(canContain {t}Type {ot}Type)" for ot in ("Apple", "Mug")]
    for o, (t, r, props) in OBJECTS.items():
        init += [f"(objectType {o} {t}Type)", f"(inReceptacle {o} {r})",
                 f"(objectAtLocation {o} {RECEPTACLES[r][0]})"] + [f"({p} {o})" for p in props]
    return ("(define (problem agenttuning_test)\n(:domain alfred)\n(:objects\n  " + "\n  ".join(objects)
            + "\n)\n(:init\n  " + "\n  ".join(init) + "\n)\n(:goal " + goal + ")\n)\n")


def shipped_logic() -> tuple[str, str] | None:
    """The PDDL domain and grammar inside the alfworld wheel, or None without the package."""
    try:
        from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
    except ImportError:
        return None
    return Path(ALFRED_PDDL_PATH).read_text(), Path(ALFRED_TWL2_PATH).read_text()


def game_file(task_type: str, *, walkthrough: list[str] | None = None, solvable: bool | None = True) -> dict:
    """A game.tw-pddl object for ``task_type`` in our room (a stand-in domain without the alfworld package)."""
    sentence, goal = GOALS.get(task_type, GOALS["pick_and_place_simple"])  # ALFRED's other types: any goal
    logic = shipped_logic()
    domain, grammar = logic or ("(define (domain alfred))", '"task": [{"rhs": "Your task is to: UNKNOWN GOAL."}]')
    return {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", sentence), "pddl_problem": problem(goal),
            "solvable": solvable, "walkthrough": walkthrough}


def add_game(json_root: Path, folder: str, task_type: str, name: str, trial: str, **game_kw) -> Path:
    """Write ``<json_root>/<folder>/<task_type>-<name>/<trial>/`` with traj_data.json and game.tw-pddl."""
    d = json_root / folder / f"{task_type}-{name}" / trial
    d.mkdir(parents=True)
    (d / "traj_data.json").write_text(json.dumps({"task_type": task_type}))
    (d / "game.tw-pddl").write_text(json.dumps(game_file(task_type, **game_kw)))
    return d


# the folder most tests use: 2 train games, 3 valid_unseen games, 1 valid_seen game
STANDARD = [
    ("train", "pick_and_place_simple", "Apple-None-Fridge-1", "trial_T0001"),
    ("train", "pick_heat_then_place_in_recep", "Mug-None-DiningTable-1", "trial_T0002"),
    ("valid_unseen", "pick_cool_then_place_in_recep", "Apple-None-DiningTable-2", "trial_T0003"),
    ("valid_unseen", "look_at_obj_in_light", "Mug-None-DeskLamp-2", "trial_T0004"),
    ("valid_unseen", "pick_clean_then_place_in_recep", "Mug-None-Fridge-2", "trial_T0005"),
    ("valid_seen", "pick_two_obj_and_place", "Apple-None-DiningTable-1", "trial_T0006"),
]


def standard_folder(root: Path) -> Path:
    """``root/alfworld-download`` holding json_2.1.1 with the STANDARD games and logic/ beside it."""
    base = root / "alfworld-download"
    for folder, task_type, name, trial in STANDARD:
        add_game(base / "json_2.1.1", folder, task_type, name, trial)
    (base / "logic").mkdir()
    return base
