"""ALFWorld's text engine, as ALFWorld itself loads a game: TextWorld's PDDL environment (``textworld.envs.PddlEnv``,
which plans and applies actions with Fast Downward) wrapped in ALFWorld's ``AlfredDemangler`` (object names as the
agent sees them: ``fridge 1``, ``apple 2``), requesting the admissible commands and whether the game is won.

Three things of the engine are not safe to share, and are handled here:

- Fast Downward's translator keeps its options in module globals, rewrites ``sys.argv`` and swaps ``sys.stdout``
  while it runs, and TextWorld's grammar is shared: every engine call runs under one process-wide lock, which also
  restores ``sys.argv``.
- The planner's state is global to Fast Downward's library, so each live game needs its own copy of the library
  (``fast_downward.load_lib`` copies the file and loads the copy). Unloading a copy (``dlclose``) after threads have
  used it crashes the next load (measured: a segmentation fault inside ``dlopen`` within 30 games on a thread pool),
  and each copy maps 34 MB, so copies are pooled: a closed game's copy goes back to the pool and the next game reuses
  it (loading a game resets the planner's state, as TextWorld's own environments do when they load the next game).
  The pool holds at most as many copies as games were ever open at once.
- Translating a game's PDDL for the planner is most of the cost of starting a game (on a game of ALFWorld's size,
  about 1.2 s a translation here, and TextWorld translates each game four times: twice on load, twice on reset).
  The translation is a pure function of the domain and the problem, so while our calls run, TextWorld's PDDL logic
  sees a ``fast_downward`` whose ``pddl2sas`` remembers its last results (:class:`_MemoTranslator`): a game costs
  two translations, and starting the same game again (a retry, the conformance check) none.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from agenttuning.envs.alfworld.data import ALFWORLD_VERSION, read_game

ENGINE_LOCK = threading.Lock()
_FREE_LIBS: list[Any] = []  # Fast Downward library copies of closed games, for the next ones (under ENGINE_LOCK)


_TRANSLATIONS = 32  # translated games remembered (a real game's translation holds a few MB)


@lru_cache(maxsize=_TRANSLATIONS)
def _translate(domain: str, problem: str, optimize: bool) -> Any:
    import fast_downward

    return fast_downward.pddl2sas(domain, problem, optimize=optimize)


class _MemoTranslator:
    """Stands in for the ``fast_downward`` module inside TextWorld's PDDL logic while our calls run: the same module,
    with ``pddl2sas`` remembered (TextWorld only reads the task and the SAS text it returns)."""

    def __getattr__(self, name: str) -> Any:
        import fast_downward

        return getattr(fast_downward, name)

    @staticmethod
    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        return _translate(domain, problem, bool(optimize))


@contextmanager
def _engine_call() -> Iterator[None]:
    """Holds ENGINE_LOCK for one engine call; keeps ``sys.argv`` (the translator sets its own) and gives TextWorld's
    PDDL logic the remembering translator for the duration."""
    from textworld.envs.pddl import logic as pddl_logic

    with ENGINE_LOCK:
        argv, module = list(sys.argv), pddl_logic.fast_downward
        pddl_logic.fast_downward = _MemoTranslator()
        try:
            yield
        finally:
            pddl_logic.fast_downward = module
            sys.argv[:] = argv


def _take_lib() -> Any:
    import fast_downward

    return _FREE_LIBS.pop() if _FREE_LIBS else fast_downward.load_lib()


def _pddl_env(infos: Any, lib: Any) -> Any:
    """TextWorld's ``PddlEnv`` on a given library copy (its constructor would load a new copy)."""
    import textworld
    from textworld.envs import PddlEnv

    class PooledPddlEnv(PddlEnv):
        def __init__(self) -> None:
            textworld.Environment.__init__(self, infos)
            self.downward_lib = lib

    return PooledPddlEnv()


def unavailable_reason() -> str | None:
    """Why the engine cannot run here (a package missing), or None."""
    try:
        import textworld  # noqa: F401
    except ImportError:
        return "textworld is not installed (pip install 'agenttuning[alfworld]')"
    try:
        import fast_downward  # noqa: F401
    except ImportError:
        return ("fast_downward (the package fast-downward-textworld, TextWorld's PDDL planner) is not installed: "
                "pip install 'agenttuning[alfworld]' (it builds Fast Downward from source: needs cmake and g++)")
    try:
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler  # noqa: F401
    except ImportError as e:
        return f"the alfworld package is not installed or does not import ({e}): pip install 'agenttuning[alfworld]' " \
               f"(alfworld=={ALFWORLD_VERSION})"
    return None


class AlfworldGame:
    """One loaded game: its state after :meth:`reset` or :meth:`step` (feedback, admissible commands, won)."""

    def __init__(self, path: Path, plan: bool = False):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler

        data = read_game(path)  # read bounded, once; the engine is handed the parsed game, not the path
        # plan: TextWorld's "walkthrough" extra, which asks Fast Downward for a plan (the game file's own walkthrough
        # is read by the caller first; this is for game files without one)
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["walkthrough"] if plan else [])
        self._lib: Any = None
        self._env: Any = None
        with _engine_call():
            self._lib = _take_lib()
            try:
                self._env = AlfredDemangler(_pddl_env(infos, self._lib), shuffle=False)  # ALFWorld's names and order
                self._env.load(data)
            except BaseException:
                _FREE_LIBS.append(self._lib)
                self._lib = self._env = None
                raise

    def reset(self) -> tuple[str, list[str], bool]:
        """Start the game: (the room and the goal, the admissible commands, won)."""
        with _engine_call():
            state = self._env.reset()
        return str(state.feedback), sorted(state["admissible_commands"] or []), bool(state["won"])

    def plan(self) -> list[str]:
        """Fast Downward's plan from the start of the game (loaded with ``plan=True``), as commands."""
        with _engine_call():
            state = self._env.reset()
        steps = state.get("extra.walkthrough")
        if not steps:
            raise RuntimeError("the game has no walkthrough and Fast Downward found no plan for it")
        return [str(s) for s in steps]

    def step(self, command: str) -> tuple[str, list[str], bool]:
        """Run one admissible command: (the feedback, the admissible commands now, won)."""
        with ENGINE_LOCK:
            state, _score, _done = self._env.step(command)
        return str(state.feedback), sorted(state["admissible_commands"] or []), bool(state["won"])

    def close(self) -> None:
        """Give this game's library copy back to the pool (idempotent)."""
        with ENGINE_LOCK:
            lib, self._lib, self._env = self._lib, None, None
            if lib is not None:
                _FREE_LIBS.append(lib)
