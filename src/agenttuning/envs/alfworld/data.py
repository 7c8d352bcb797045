"""ALFWorld's data folder, read as our tasks: where it is, what its layout must be, and the scan into Task records.

ALFWorld's games are not generated here: ``alfworld-download`` (a script of the ``alfworld`` package) fetches them
on a machine with internet into a folder laid out as::

    <root>/json_2.1.1/{train,valid_seen,valid_unseen}/<task type>-<object>-<...>-<scene>/trial_<id>/
        traj_data.json     ALFRED's trajectory record; we read only its "task_type"
        game.tw-pddl       the game: JSON with the PDDL domain, the text grammar (the goal already written into it),
                           the PDDL problem, "solvable" and the expert's "walkthrough"
    <root>/logic/alfred.pddl, alfred.twl2   the domain and grammar the games were made from (not needed to play:
                           every game.tw-pddl carries its own copy)

The user names ``<root>`` (or its ``json_2.1.1`` folder) by ``$AGENTTUNING_ALFWORLD_DATA`` or an argument. The scan
keeps what ALFWorld's own ``AlfredTWEnv`` keeps: games of its six task types, not of the "movable" or "Sliced"
variants, with a game file that says ``"solvable": true``; everything else is reported with its reason. Splits as in
ALFWorld and AgentBench: ``train`` is our train split, ``valid_unseen`` (ALFWorld's out-of-distribution evaluation
set, the 134 games AgentBench evaluates on) our test split; ``valid_seen`` (in-distribution) is the test split when
asked for instead. Task ids and payloads come from the game's path relative to ``json_2.1.1``, so the same data gives
the same tasks on every machine, wherever it lies.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agenttuning.schema import Task

DATA_ENV = "AGENTTUNING_ALFWORLD_DATA"
JSON_DIR = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
ALFWORLD_VERSION = "0.4.2"
# ALFWorld's six task types (AlfredTWEnv's TASK_TYPES), in its order
TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
TaskType = Literal[
    "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place",
]
TestFolder = Literal["valid_unseen", "valid_seen"]
FOLDERS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
# A real game file is 60 to 150 KB and a traj_data.json under 1 MB; far larger is not ALFWorld's and is not read.
MAX_GAME_BYTES = 8 << 20
MAX_TRAJ_BYTES = 16 << 20
MAX_GOAL_CHARS = 300
_TASK_RHS = re.compile(r'"rhs"\s*:\s*"Your task is to: ((?:[^"\\]|\\.){1,2000})"')
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class AlfworldDataError(ValueError):
    """The data folder, or one of its files, is not what ALFWorld's layout says (the message names the path)."""


class AlfworldPayload(BaseModel):
    """What an ``alfworld`` task carries: where its game is (relative to ``json_2.1.1``), its type and goal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    game: str = Field(description="The game file, relative to json_2.1.1, e.g. "
                                  "'valid_unseen/pick_and_place_simple-Mug-None-Desk-308/trial_T1/game.tw-pddl'.")
    task_type: TaskType
    goal: str = Field(min_length=1, max_length=MAX_GOAL_CHARS, description="The game's goal, as it states it.")

    @field_validator("game")
    @classmethod
    def _inside_the_data_folder(cls, v: str) -> str:
        """A relative POSIX path down one of the split folders to a game file: nothing that could leave the data
        folder (a task file is input like any other)."""
        p = PurePosixPath(v)
        if "\\" in v or "\x00" in v or p.is_absolute() or ".." in p.parts or "." in p.parts:
            raise ValueError(f"{v[:200]!r} is not a plain relative path inside {JSON_DIR}")
        if len(p.parts) != 4 or p.parts[0] not in FOLDERS or p.name != GAME_FILE:
            raise ValueError(f"{v[:200]!r} is not <{'|'.join(FOLDERS)}>/<task>/<trial>/{GAME_FILE}")
        return v


@dataclass
class ScanReport:
    """The tasks of a data folder by split, and every game left out with its reason (relative path -> reason)."""

    root: Path
    by_split: dict[str, list[Task]]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        """Every task, train then test (what ``agenttuning tasks import alfworld`` writes)."""
        return self.by_split["train"] + self.by_split["test"]

    def summary(self) -> str:
        counts = ", ".join(f"{s} {len(ts)}" for s, ts in self.by_split.items())
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            kind = r.split(":", 1)[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        left = "; ".join(f"{n} {k}" for k, n in sorted(reasons.items())) or "none"
        return f"ALFWorld data {self.root}: {counts} tasks; left out: {left}"


# --------------------------------------------------------------------------------------------------------------
# Where the data is


def configured_root(data_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The data folder named by ``data_path``, else ``$AGENTTUNING_ALFWORLD_DATA``; None when neither is set."""
    value = data_path if data_path is not None else (os.environ.get(DATA_ENV) or None)
    return Path(value).expanduser() if value is not None else None


def json_dir(root: Path) -> Path:
    """The ``json_2.1.1`` folder of ``root``: ``root/json_2.1.1``, or ``root`` itself if it is that folder (it holds
    the split folders); :class:`AlfworldDataError` saying what is missing otherwise."""
    if not root.is_dir():
        raise AlfworldDataError(f"{root}: no such folder (the ALFWorld data folder, which holds {JSON_DIR}/)")
    for candidate in (root / JSON_DIR, root):
        if candidate.is_dir() and any((candidate / f).is_dir() for f in FOLDERS):
            return candidate
    raise AlfworldDataError(
        f"{root}: not ALFWorld's data layout: expected {JSON_DIR}/ holding {', '.join(FOLDERS)} "
        f"(the folder alfworld-download writes), or the {JSON_DIR} folder itself")


def layout_problem(root: Path, test_folder: TestFolder = "valid_unseen") -> str | None:
    """Why ``root`` cannot give both splits (no json_2.1.1, no train folder, no test folder), or None."""
    try:
        base = json_dir(root)
    except AlfworldDataError as e:
        return str(e)
    missing = [f for f in ("train", test_folder) if not (base / f).is_dir()]
    if missing:
        return f"{base}: no {' or '.join(missing)} folder (ALFWorld's train and {test_folder} splits are both needed)"
    return None


# --------------------------------------------------------------------------------------------------------------
# Reading one game


def _read_json(path: Path, limit: int) -> Any:
    size = path.stat().st_size
    if size > limit:
        raise AlfworldDataError(f"{path}: {size} bytes, over the {limit} a file of ALFWorld's is read up to")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise AlfworldDataError(f"{path}: not JSON ({str(e)[:120]})") from None


def read_game(path: Path) -> dict[str, Any]:
    """A ``game.tw-pddl`` file as its JSON object, checked for the keys a game needs."""
    data = _read_json(path, MAX_GAME_BYTES)
    if not isinstance(data, dict):
        raise AlfworldDataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("pddl_domain", "grammar", "pddl_problem") if not isinstance(data.get(k), str)]
    if missing:
        raise AlfworldDataError(f"{path}: not a game.tw-pddl file: no {', '.join(missing)}")
    return data


def goal_of(grammar: str) -> str:
    """The goal the game states ("put a clean apple in fridge"): the ``task`` rule of its grammar, in which ALFWorld
    wrote the goal when it made the game; :class:`AlfworldDataError` if it still says ``UNKNOWN GOAL`` or is absent.

    >>> goal_of('"task": [{"rhs": "Your task is to: put a hot mug in cabinet."}]')
    'put a hot mug in cabinet'
    """
    m = _TASK_RHS.search(grammar)
    if m is None:
        raise AlfworldDataError("the game's grammar has no 'Your task is to: ...' rule")
    goal = " ".join(json.loads(f'"{m[1]}"').split()).rstrip(".")
    if not goal or goal == "UNKNOWN GOAL":
        raise AlfworldDataError("the game's grammar has no goal written in (UNKNOWN GOAL): run alfworld-generate")
    if len(goal) > MAX_GOAL_CHARS:
        raise AlfworldDataError(f"the game's goal is {len(goal)} characters, over {MAX_GOAL_CHARS}")
    return goal


def walkthrough_of(path: Path) -> list[str] | None:
    """The expert's commands recorded in the game file (``alfworld-generate`` writes them), or None if it has none."""
    steps = read_game(path).get("walkthrough")
    if steps is None:
        return None
    if not isinstance(steps, list) or not all(isinstance(s, str) and 0 < len(s) <= 200 for s in steps):
        raise AlfworldDataError(f"{path}: 'walkthrough' is not a list of commands")
    return list(steps)


# --------------------------------------------------------------------------------------------------------------
# The scan


def task_id(rel: PurePosixPath) -> str:
    """``alfworld-<folder>-<task>-<trial>`` from the game's relative path (characters outside ``[A-Za-z0-9_.-]``
    become ``_``).

    >>> task_id(PurePosixPath("valid_unseen/pick_and_place_simple-Mug-None-Desk-308/trial_T2019/game.tw-pddl"))
    'alfworld-valid_unseen-pick_and_place_simple-Mug-None-Desk-308-trial_T2019'
    """
    return "alfworld-" + "-".join(_ID_UNSAFE.sub("_", part) for part in rel.parts[:3])


def _task_of(base: Path, trial: Path, split: str, env_id: str) -> Task:
    rel = PurePosixPath(trial.relative_to(base).as_posix()) / GAME_FILE
    try:
        traj = _read_json(trial / TRAJ_FILE, MAX_TRAJ_BYTES)
    except AlfworldDataError as e:
        raise AlfworldDataError(f"bad file: {e}") from None
    task_type = traj.get("task_type") if isinstance(traj, dict) else None
    if task_type not in TASK_TYPES:
        raise AlfworldDataError(f"task type: {str(task_type)[:60]!r} is not one of ALFWorld's six")
    game_path = trial / GAME_FILE
    if not game_path.is_file():
        raise AlfworldDataError(f"no game: {GAME_FILE} is missing (run alfworld-generate)")
    try:
        game = read_game(game_path)
    except AlfworldDataError as e:
        raise AlfworldDataError(f"bad file: {e}") from None
    if game.get("solvable") is not True:
        raise AlfworldDataError(f"unsolvable: the game file says solvable={game.get('solvable')!r}")
    try:
        goal = goal_of(game["grammar"])
    except AlfworldDataError as e:
        raise AlfworldDataError(f"no goal: {e}") from None
    payload = AlfworldPayload(game=str(rel), task_type=task_type, goal=goal)
    return Task(id=task_id(rel), env=env_id, split=split,  # type: ignore[arg-type]
                instruction=f"Your task is to: {goal}. (ALFWorld game {rel.parent})", payload=payload.model_dump())


def scan(root: str | os.PathLike[str], env_id: str, test_folder: TestFolder = "valid_unseen") -> ScanReport:
    """Every playable game of ``root`` as a Task: ``train`` from ``train/``, ``test`` from ``test_folder``
    (``valid_unseen`` by default), each list sorted by path. A game left out (movable or sliced variants, unknown
    task type, no or unsolvable game file, unreadable JSON) is in ``skipped`` with its reason;
    :class:`AlfworldDataError` if the folder itself is not ALFWorld's layout."""
    root = Path(root)
    problem = layout_problem(root, test_folder)
    if problem:
        raise AlfworldDataError(problem)
    base = json_dir(root)
    report = ScanReport(root=root, by_split={"train": [], "test": []})
    for split, folder in (("train", "train"), ("test", test_folder)):
        for traj in sorted((base / folder).glob(f"*/*/{TRAJ_FILE}")):
            trial = traj.parent
            rel = trial.relative_to(base).as_posix()
            if "movable" in rel or "Sliced" in rel:  # ALFWorld's text engine does not support them either
                report.skipped[rel] = "movable or sliced: not supported by ALFWorld's text games"
                continue
            try:
                report.by_split[split].append(_task_of(base, trial, split, env_id))
            except (AlfworldDataError, OSError) as e:
                report.skipped[rel] = str(e) if isinstance(e, AlfworldDataError) else f"unreadable: {e}"
    seen: dict[str, str] = {}
    for t in report.tasks:
        if t.id in seen:  # only paths that differ in characters outside [A-Za-z0-9_.-] can collide
            raise AlfworldDataError(f"{root}: two games give the task id {t.id}: rename one of their folders")
        seen[t.id] = t.split
    return report
