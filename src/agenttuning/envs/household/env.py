"""One ``household`` episode: a TextWorld cooking game, played one admissible command at a time.

The agent's action is one command, written as the game lists it (``go north``, ``take knife from table``). Only a
command among the game's admissible commands at that moment reaches the game; anything else (an unknown verb, a
megabyte of text, a NUL byte) gets the invalid-action feedback and uses a turn, as ALFWorld's "Nothing happens."
does. ``give up`` ends the game as lost. Winning the game ends the episode with reward 1; losing it (eating or
wrongly preparing an ingredient the recipe needs) ends it with reward 0; TextWorld's partial score is in ``info``.
Observations are the game's text without TextWorld's ASCII-art banner and prompt line, then the admissible
commands, cut to bounded sizes. A self-instructed game (a spec, :mod:`.spec`) has no objective text of its own, so
its first observation starts with the task's instruction.
"""

from __future__ import annotations

import threading

import re
from typing import TYPE_CHECKING, Any

from agenttuning.envs.admissible import commands_text, normalise_command
from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.household.games import HouseholdTaskPayload, SpecPayload, ensure_game
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.household.definition import HouseholdDefinition

_TEXTWORLD_LOCK = threading.Lock()
MAX_COMMAND_CHARS = 200  # far above any admissible command; longer text is refused before it is looked at
MAX_FEEDBACK_CHARS = 4000
MAX_COMMANDS_CHARS = 3000
MAX_TASK_CHARS = 500
GIVE_UP = "give up"
_LETTER = re.compile(r"[A-Za-z]")


def clean_feedback(text: str) -> str:
    """The game's text without TextWorld's decoration: lines with no letter (the ASCII-art banner, rules) are
    dropped, the text stops at the ``>`` prompt line (which carries the status bar), blank runs are collapsed.

    >>> clean_feedback("\\n  ___ \\n | $$ |\\n\\nYou are hungry!\\n\\n-= Kitchen =-\\nA room.\\n\\n>   -= Kitchen =-0/1")
    'You are hungry!\\n\\n-= Kitchen =-\\nA room.'
    """
    lines: list[str] = []
    for line in text.split("\n"):
        if line.startswith(">"):
            break
        lines.append(line.rstrip() if _LETTER.search(line) else "")
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return out[:MAX_FEEDBACK_CHARS]


class HouseholdEnv(EpisodeEnv[HouseholdTaskPayload]):
    """An episode of one generated game, a cooking game or a spec's (generated on first use; cached on disk)."""

    definition: HouseholdDefinition

    def __init__(self, definition: HouseholdDefinition):
        super().__init__(definition)
        self._game: Any = None  # textworld's environment
        self._admissible: list[str] = []

    def start(self, task: Task, payload: HouseholdTaskPayload) -> str:
        import textworld

        game_payload = payload.root
        path = ensure_game(game_payload, self.definition.cache_dir)
        infos = textworld.EnvInfos(admissible_commands=True, won=True, lost=True, score=True, max_score=True)
        with _TEXTWORLD_LOCK:  # TextWorld's game loading (its grammar parser) is not thread-safe: one at a time
            game = textworld.start(str(path), request_infos=infos)
            self._game = game
            state = game.reset()
        self._admissible = sorted(state["admissible_commands"] or [])
        text = f"{clean_feedback(state.feedback)}\n\n{commands_text(self._admissible, MAX_COMMANDS_CHARS)}"
        if isinstance(game_payload, SpecPayload):  # not a cooking game: its goal is the instruction's
            return f"This game is not a cooking game. Your task: {task.instruction[:MAX_TASK_CHARS]}\n\n{text}"
        return text

    def act(self, action: str) -> StepResult:
        assert self._game is not None
        if len(action) > MAX_COMMAND_CHARS:
            return self.invalid(f"the command is longer than {MAX_COMMAND_CHARS} characters")
        command = normalise_command(action)
        if command == GIVE_UP:
            return self.final(0.0, False, "You gave up; the game is lost.", command=command)
        # compared normalised on both sides (the game lists e.g. "cook carrot with BBQ"), sent as the game listed it
        listed = {normalise_command(c): c for c in self._admissible}.get(command)
        if listed is None:
            return self.invalid(f"{command[:80]!r} is not one of the available commands")
        with _TEXTWORLD_LOCK:  # the step re-checks the game's logic with the same shared parser
            state, score, done = self._game.step(listed)
        info = {"score": int(score), "max_score": int(state["max_score"]), "command": command}
        feedback = clean_feedback(state.feedback)
        if state["won"]:
            return self.final(1.0, True, feedback or "You won.", **info)
        if state["lost"] or done:
            return self.final(0.0, False, feedback or "You lost.", **info)
        self._admissible = sorted(state["admissible_commands"] or [])
        return StepResult(f"{feedback}\n\n{commands_text(self._admissible, MAX_COMMANDS_CHARS)}", 0.0, info=info)

    def release(self) -> None:
        game, self._game = self._game, None
        if game is not None:
            game.close()
