"""One ``alfworld`` episode: an ALFWorld game, played one admissible command at a time through ALFWorld's engine.

The first observation is the game's own (the room, what is in it, "Your task is to: ..."), without TextWorld's
welcome banner, as AgentBench shows it; every observation ends with the admissible commands. Only a command among
them reaches the game; anything else uses a turn and gets ALFWorld's own answer to it, "Nothing happens.", with the
reason (so a megabyte of text or a NUL byte never reaches the engine). ``put X in/on Y`` (the form of ALFWorld's
older games, and of AgentInstruct's trajectories) and ``move X to Y`` (the form of alfworld 0.4's games) are the same
command: either is accepted where the game lists the other. ``give up`` ends the game as lost. Winning ends the
episode with reward 1; ALFWorld's games cannot be lost otherwise, so running out of turns (50, ALFWorld's budget)
is the other way to fail.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agenttuning.envs.alfworld.data import AlfworldPayload, json_dir
from agenttuning.envs.alfworld.engine import AlfworldGame
from agenttuning.envs.admissible import commands_text, normalise_command
from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.alfworld.definition import AlfworldDefinition

MAX_COMMAND_CHARS = 200  # far above any admissible command; longer text is refused before it is looked at
MAX_FEEDBACK_CHARS = 4000
MAX_COMMANDS_CHARS = 4000
GIVE_UP = "give up"
_WELCOME = re.compile(r"^-= Welcome to TextWorld, ALFRED! =-\s*")
_PUT = re.compile(r"put (.+?) (?:in/on|in|on|into|onto) (.+)")
_MOVE = re.compile(r"move (.+?) to (.+)")


def clean_feedback(text: str) -> str:
    """The game's text without TextWorld's welcome banner, blank runs collapsed, bounded.

    >>> clean_feedback("-= Welcome to TextWorld, ALFRED! =-\\n\\nYou are in a room.\\n\\n\\n\\nYour task is to: x.")
    'You are in a room.\\n\\nYour task is to: x.'
    """
    text = re.sub(r"\n{3,}", "\n\n", _WELCOME.sub("", text.strip())).strip()
    return text[:MAX_FEEDBACK_CHARS]


def spellings(command: str) -> list[str]:
    """The command, then the same command in ALFWorld's other spelling of putting something somewhere.

    >>> spellings("put apple 1 in/on fridge 1")
    ['put apple 1 in/on fridge 1', 'move apple 1 to fridge 1']
    >>> spellings("move apple 1 to fridge 1")
    ['move apple 1 to fridge 1', 'put apple 1 in/on fridge 1']
    """
    m = _PUT.fullmatch(command)
    if m:
        return [command, f"move {m[1]} to {m[2]}"]
    m = _MOVE.fullmatch(command)
    if m:
        return [command, f"put {m[1]} in/on {m[2]}"]
    return [command]


class AlfworldEnv(EpisodeEnv[AlfworldPayload]):
    """An episode of one ALFWorld game from the definition's data folder."""

    definition: AlfworldDefinition

    def __init__(self, definition: AlfworldDefinition):
        super().__init__(definition)
        self._game: AlfworldGame | None = None
        self._admissible: list[str] = []

    def start(self, task: Task, payload: AlfworldPayload) -> str:
        root = self.definition.data_root()
        if root is None:
            reason = self.definition.unavailable_reason()
            raise RuntimeError(f"task {task.id}: no ALFWorld data folder is set ({reason})")
        path = json_dir(root) / payload.game  # the payload model keeps `game` a plain relative path under it
        if not path.is_file():
            raise FileNotFoundError(f"task {task.id}: {path} is missing from the ALFWorld data folder {root}")
        game = AlfworldGame(path)
        self._game = game
        feedback, self._admissible, _won = game.reset()
        return f"{clean_feedback(feedback)}\n\n{commands_text(self._admissible, MAX_COMMANDS_CHARS)}"

    def act(self, action: str) -> StepResult:
        assert self._game is not None
        if len(action) > MAX_COMMAND_CHARS:
            return self.invalid(f"the command is longer than {MAX_COMMAND_CHARS} characters")
        command = normalise_command(action)
        if command == GIVE_UP:
            return self.final(0.0, False, "You gave up; the task is failed.", command=command)
        listed = {normalise_command(c): c for c in self._admissible}
        chosen = next((listed[s] for s in spellings(command) if s in listed), None)
        if chosen is None:
            return self.invalid(f"{command[:80]!r} is not one of the available commands")
        feedback, self._admissible, won = self._game.step(chosen)
        info = {"command": chosen}
        if won:
            return self.final(1.0, True, clean_feedback(feedback) or "You won.", **info)
        return StepResult(f"{clean_feedback(feedback)}\n\n{commands_text(self._admissible, MAX_COMMANDS_CHARS)}", 0.0, info=info)

    def release(self) -> None:
        game, self._game = self._game, None
        if game is not None:
            game.close()
