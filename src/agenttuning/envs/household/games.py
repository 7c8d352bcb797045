"""TextWorld cooking games for the ``household`` environment: the settings of a game, and its generation and cache.

A game is made by TextWorld's own generator (``tw-make tw-cooking``, textworld 1.7) from a seed and a difficulty
*level* (rooms, ingredients to gather and to find, whether they must be cut or cooked, whether doors are closed).
Generating takes seconds per game, so tasks name only (seed, level) and a game is generated on first use, into
``$AGENTTUNING_CACHE/household/<key>/`` (default ``~/.cache/agenttuning``) where ``key`` spells out every setting.
Generation runs in a child process under an exclusive file lock (so concurrent episodes, threads or processes, make
a game once), writes into a temporary folder and renames it into place (so a reader never sees half a game).

Two things make the files byte-identical across runs and machines (the tests compare them): the child runs with
``PYTHONHASHSEED=0`` (TextWorld iterates over sets when it writes its rules, so a salted hash reorders them), and it
runs inside the game's folder with a relative ``--output`` (TextWorld records the output path in the game's JSON).

Self-instructed tasks carry a :class:`SpecPayload` instead (``"kind": "spec"``): a game written as data
(:mod:`.spec`), built the same way (child process, ``PYTHONHASHSEED=0``, lock, rename) by ``GameMaker`` into
``<cache>/tw1.7-spec-<sha256 of the spec>/``. :class:`HouseholdTaskPayload` is either kind; a cooking task's payload
is unchanged (it has no ``kind`` key).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

from agenttuning.envs.household.spec import SPEC_FILE, WorldSpec, spec_problem

TEXTWORLD_VERSION = "1.7"
GENERATE_TIMEOUT_S = 300.0  # one game takes about 4 s; generous for a loaded machine
GAME_FILE = "game.z8"


class Level(BaseModel):
    """A difficulty level: the ``tw-cooking`` settings a game is generated with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    recipe: int = Field(ge=1, le=5)  # ingredients in the recipe
    take: int = Field(ge=0, le=5)  # of which the player must find (not already in the kitchen)
    go: Literal[1, 6, 9, 12]  # rooms
    cut: bool = False  # some ingredients must be sliced, diced or chopped
    cook: bool = False  # some ingredients must be fried, roasted or grilled
    open: bool = False  # containers and doors start closed


# Easiest to hardest. The hardest stays short enough for the turn budget: its walkthroughs are well under half of it.
LEVELS: tuple[Level, ...] = (
    Level(name="kitchen", recipe=1, take=1, go=1),
    Level(name="prepare", recipe=2, take=1, go=6, cut=True),
    Level(name="cook", recipe=2, take=1, go=6, cut=True, cook=True),
    Level(name="house", recipe=3, take=2, go=9, cut=True, cook=True, open=True),
)


class HouseholdPayload(BaseModel):
    """What a ``household`` task carries: the seed and settings its game is generated from.

    ``food_split`` is TextWorld's own split of foods and preparations (train games use its ``train`` foods and
    preparations, test games its ``test`` ones), so a test game's recipe is never a training game's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(ge=0, lt=2**31)
    level: Level
    food_split: Literal["train", "valid", "test"]

    @property
    def key(self) -> str:
        """The cache folder's name: every setting that changes the game, and the generator's version."""
        lv = self.level
        flags = "".join(f for f, on in (("x", lv.cut), ("c", lv.cook), ("o", lv.open)) if on) or "-"
        return (f"tw{TEXTWORLD_VERSION}-r{lv.recipe}t{lv.take}g{lv.go}{flags}-{self.food_split}-s{self.seed}")

    def tw_make_args(self) -> list[str]:
        """The ``tw-make`` arguments of this game (the recipe is drawn from the same seed as the world)."""
        lv = self.level
        args = ["tw-cooking", "--recipe", str(lv.recipe), "--take", str(lv.take), "--go", str(lv.go),
                "--seed", str(self.seed), "--recipe-seed", str(self.seed), "--split", self.food_split]
        args += [flag for flag, on in (("--cut", lv.cut), ("--cook", lv.cook), ("--open", lv.open)) if on]
        return args + ["--output", GAME_FILE, "--silent", "--force"]


MAX_WALKTHROUGH = 40  # commands; the turn budget (50) must leave room to spare
MAX_COMMAND_CHARS = 120  # a walkthrough command (the episode refuses anything over 200)


class SpecPayload(BaseModel):
    """What a self-instructed ``household`` task carries: the game as a spec and the commands that win it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["spec"]
    spec: WorldSpec
    walkthrough: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_COMMAND_CHARS)]] = Field(
        min_length=1, max_length=MAX_WALKTHROUGH)

    @property
    def key(self) -> str:
        """The cache folder's name: the generator's version and the spec's content hash (16 hex digits)."""
        return f"tw{TEXTWORLD_VERSION}-spec-{spec_digest(self.spec)}"


def spec_digest(spec: WorldSpec) -> str:
    """SHA-256 (first 16 hex digits) of the spec's canonical JSON."""
    return hashlib.sha256(spec.canonical().encode()).hexdigest()[:16]


class HouseholdTaskPayload(RootModel[HouseholdPayload | SpecPayload]):
    """A ``household`` task's payload, either kind (what an episode validates): ``.root`` is the payload itself."""


AnyPayload = HouseholdPayload | SpecPayload


def games_cache_root() -> Path:
    """``$AGENTTUNING_CACHE/household`` (default ``~/.cache/agenttuning/household``)."""
    base = os.environ.get("AGENTTUNING_CACHE") or Path.home() / ".cache" / "agenttuning"
    return Path(base) / "household"


@cache
def tw_make_script() -> Path | None:
    """The installed ``tw-make`` script (next to this Python's other scripts, else on ``PATH``), or None."""
    candidate = Path(sysconfig.get_path("scripts")) / "tw-make"
    if candidate.is_file():
        return candidate
    found = shutil.which("tw-make")
    return Path(found) if found else None


def unavailable_reason() -> str | None:
    """Why games cannot be generated and played here (textworld missing), or None."""
    try:
        import textworld  # noqa: F401
    except ImportError:
        return (f"textworld is not installed: pip install 'agenttuning[household]' (textworld=={TEXTWORLD_VERSION})")
    if tw_make_script() is None:
        return "textworld is installed but its tw-make script was not found"
    return None


def game_dir(payload: AnyPayload, root: Path | None = None) -> Path:
    """The game's folder in the cache (it may not exist yet: :func:`ensure_game` makes it)."""
    return (root or games_cache_root()) / payload.key


def ensure_game(payload: AnyPayload, root: Path | None = None) -> Path:
    """The path of the game's ``game.z8``, generating it first if the cache lacks it (once, under a file lock).

    A spec that cannot be a game raises ``ValueError`` before anything runs; a failed generation, ``RuntimeError``."""
    if isinstance(payload, SpecPayload):
        problem = spec_problem(payload.spec)
        if problem:
            raise ValueError(f"household spec {payload.key}: {problem[0]}: {problem[1]}")
    folder = game_dir(payload, root)
    game = folder / GAME_FILE
    if game.is_file():
        return game
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{payload.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another thread or process may be making this game: wait for it
        try:
            if not game.is_file():
                _generate(payload, folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return game


def _generate(payload: AnyPayload, folder: Path) -> None:
    """Run ``tw-make`` (or, for a spec, the spec builder) in a temporary folder beside ``folder``, then rename it
    into place."""
    script = tw_make_script()
    if script is None:
        raise RuntimeError(unavailable_reason() or "tw-make not found")
    tmp = Path(tempfile.mkdtemp(prefix=f".{payload.key}.", dir=folder.parent))
    try:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if isinstance(payload, SpecPayload):
            (tmp / SPEC_FILE).write_text(payload.spec.canonical())
            command = [sys.executable, "-m", "agenttuning.envs.household.spec_build", SPEC_FILE]
        else:
            command = [sys.executable, str(script), *payload.tw_make_args()]
        try:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=GENERATE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"generating {payload.key} ran past {GENERATE_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0 or not (tmp / GAME_FILE).is_file():
            raise RuntimeError(f"generating {payload.key} failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout)[-800:]}")
        if folder.exists():  # a stale partial folder (no game.z8): replace it
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def walkthrough(payload: AnyPayload, root: Path | None = None) -> list[str]:
    """The game's winning command sequence: a spec's own, or as TextWorld's generator recorded it (generating the
    game if needed)."""
    if isinstance(payload, SpecPayload):
        return list(payload.walkthrough)
    meta = json.loads((ensure_game(payload, root).with_suffix(".json")).read_text())["metadata"]
    return list(meta["walkthrough"])
