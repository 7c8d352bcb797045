"""The ``alfworld`` environment family: ALFWorld's own games (AgentTuning's largest held-in family), read from a data
folder the user downloaded, played through ALFWorld's engine.

Tasks come from the folder named by the ``data_path`` argument or ``$AGENTTUNING_ALFWORLD_DATA`` (see
:mod:`.data`); with neither set the family lists no tasks and :meth:`AlfworldDefinition.unavailable_reason` says what
to set. The expert plays the game's own walkthrough (recorded in the game file by ``alfworld-generate``, ALFWorld's
hand-coded expert), or, for a game file without one, the plan Fast Downward finds for it.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from agenttuning.envs.alfworld import data, engine
from agenttuning.envs.alfworld.data import AlfworldPayload, TestFolder
from agenttuning.envs.alfworld.env import GIVE_UP, MAX_COMMAND_CHARS, AlfworldEnv
from agenttuning.envs.base import EnvDefinition
from agenttuning.schema import Task, Turn

NAME = "alfworld"
VERSION = 1
ENV_ID = f"{NAME}-v{VERSION}"

_SYSTEM_PROMPT = """\
You are in a house, in the middle of a room with furniture and objects around you, and you have a household task \
to do, such as putting an object somewhere, cleaning, heating or cooling it first, or looking at it under a lamp. \
Go to the places where the object could be, open them if they are closed, take it, treat it as the task says (clean \
it in a sinkbasin, heat it with a microwave, cool it with a fridge, turn on a desklamp to look at it) and put it \
where the task says.

In every turn, first think about what to do next, then give exactly one command, in this form:
Thought: <your reasoning>
Action: <one command>

Commands look like: go to <place>, open <place>, close <place>, take <object> from <place>, move <object> to \
<place> (or put <object> in/on <place>), clean <object> with <place>, heat <object> with <place>, cool <object> \
with <place>, use <lamp>, examine <thing>, look, inventory. After every observation you see the AVAILABLE COMMANDS; \
your command must be one of them, with the numbers as written, for example:
Action: go to countertop 1
A command that is not available does nothing ("Nothing happens.") and still uses a turn. "{give_up}" ends the \
task as failed. You have at most {turns} turns."""

_TREAT = re.compile(r"(heat|cool|clean) (.+?) with (.+)")
_STATE = {"heat": "hot", "cool": "cool", "clean": "clean"}


def thought_for(command: str, goal: str) -> str:
    """A short, true reason for a walkthrough command, from what the command does (the expert's Thought).

    >>> thought_for("cool apple 1 with fridge 1", "put a cool apple in countertop")
    'The task needs the apple 1 cool, so I cool it with the fridge 1.'
    """
    if command.startswith("go to "):
        return f"To {goal}, I go to the {command[6:]} next."
    if command.startswith("open "):
        return f"The {command[5:]} is closed; I open it to see what is inside."
    if command.startswith("close "):
        return f"I close the {command[6:]}."
    m = re.fullmatch(r"take (.+?) from (.+)", command)
    if m:
        return f"Here is the {m[1]}, which the task is about: I take it from the {m[2]}."
    m = re.fullmatch(r"(?:move (.+?) to|put (.+?) in/on) (.+)", command)
    if m:
        return f"I am at the {m[3]} with the {m[1] or m[2]}, so I put it here, as the task says."
    m = _TREAT.fullmatch(command)
    if m:
        return f"The task needs the {m[2]} {_STATE[m[1]]}, so I {m[1]} it with the {m[3]}."
    if command.startswith("use "):
        return f"I turn on the {command[4:]} to look at the object in its light."
    if command.startswith("examine "):
        return f"I examine the {command[8:]}."
    return f"Next step of my plan: {command}."


class AlfworldDefinition(EnvDefinition[AlfworldPayload]):
    """ALFWorld's text games from a user-given data folder. ``data_path`` overrides ``$AGENTTUNING_ALFWORLD_DATA``
    (read when the tasks are first listed and at every episode); ``test_folder`` picks the test split's folder,
    ``valid_unseen`` (ALFWorld's out-of-distribution set, AgentBench's) or ``valid_seen``."""

    name = NAME
    version = VERSION
    description = "ALFWorld's household text games (needs ALFWorld's downloaded data: $AGENTTUNING_ALFWORLD_DATA)."
    max_turns = 50  # ALFWorld's episode budget (max_nb_steps_per_episode)
    test_sample = 3  # a game takes about a second to load; `agenttuning check` plays every test game
    env_class = AlfworldEnv

    def __init__(self, data_path: str | os.PathLike[str] | None = None, test_folder: TestFolder = "valid_unseen"):
        self.data_path = data_path
        self.test_folder = test_folder
        self._walkthroughs: dict[str, list[str]] = {}
        self._walkthrough_lock = threading.Lock()

    def data_root(self) -> Path | None:
        """The data folder: ``data_path``, else ``$AGENTTUNING_ALFWORLD_DATA``, else None."""
        return data.configured_root(self.data_path)

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        """The data folder's games (:func:`.data.scan`); none when no folder is set. A folder that is set but is
        not ALFWorld's layout is an error naming it (a wrong path is never read as "no tasks")."""
        root = self.data_root()
        if root is None:
            return {"train": [], "test": []}
        return data.scan(root, self.id, self.test_folder).by_split

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(give_up=GIVE_UP, turns=self.max_turns)

    def invalid_action(self, reason: str) -> str:
        """ALFWorld's answer to a command it cannot carry out, with the reason and what to send instead."""
        return (f"Nothing happens. ({reason}; reply with 'Thought: ...' and then 'Action: ...' with one of the "
                "available commands.)")

    # --- episodes ------------------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """What is missing, all of it: the engine's packages, the data folder setting, the folder's layout."""
        problems = []
        missing = engine.unavailable_reason()
        if missing:
            problems.append(missing)
        root = self.data_root()
        if root is None:
            problems.append(f"no ALFWorld data folder is set: set ${data.DATA_ENV} to the folder alfworld-download "
                            f"wrote (it holds {data.JSON_DIR}/), see docs/envs/alfworld.md")
        else:
            layout = data.layout_problem(root, self.test_folder)
            if layout:
                problems.append(f"${data.DATA_ENV}: {layout}")
        return "; ".join(problems) or None

    def walkthrough(self, task: Task) -> list[str]:
        """The game's expert commands: the walkthrough in its game file, else Fast Downward's plan (once per game)."""
        payload = self.payload(task)
        with self._walkthrough_lock:
            cached = self._walkthroughs.get(payload.game)
        if cached is not None:
            return cached
        root = self.data_root()
        if root is None:
            raise RuntimeError(f"task {task.id}: {self.unavailable_reason()}")
        path = data.json_dir(root) / payload.game
        steps = data.walkthrough_of(path)
        if steps is None:
            game = engine.AlfworldGame(path, plan=True)
            try:
                steps = game.plan()
            finally:
                game.close()
        with self._walkthrough_lock:
            self._walkthroughs[payload.game] = steps
        return steps

    def expert(self, task: Task, history: list[Turn]) -> str:
        """The walkthrough, one command a turn, each with its reason."""
        done = sum(1 for t in history if t.role == "assistant")
        steps = self.walkthrough(task)
        if done >= len(steps):
            return f"Thought: My plan is used up without finishing the task; I stop.\nAction: {GIVE_UP}"
        return f"Thought: {thought_for(steps[done], self.payload(task).goal)}\nAction: {steps[done]}"

    def wrong_answer(self, task: Task) -> str:
        return f"Thought: I will stop here.\nAction: {GIVE_UP}"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then commands the game's parser or the put/move aliasing might choke on."""
        return super().adversarial_actions(task) + [
            "move apple 1 to fridge 1",  # not available at the start (and the alias must not invent it)
            "put " + "x in/on " * 20 + "y",
            "go to " * 30,
            "x" * (MAX_COMMAND_CHARS + 1),
            "look\ngive up",  # only the first line counts
            "restart", "quit", "undo", "help me", "take all", "examine " + "fridge 1 " * 20,
        ]


def import_alfworld(path: str | os.PathLike[str], test_folder: TestFolder = "valid_unseen") -> data.ScanReport:
    """``agenttuning tasks import alfworld PATH``: the folder's games as ``alfworld`` tasks, and what was left out.
    Episodes of the written tasks still need the folder: set ``$AGENTTUNING_ALFWORLD_DATA`` to ``path``."""
    return data.scan(path, ENV_ID, test_folder)
