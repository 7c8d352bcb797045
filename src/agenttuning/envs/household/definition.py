"""The ``household`` environment family: identity, prompt, tasks, expert (AgentTuning's ALFWorld family, here on
TextWorld's cooking games, which the machines without ALFWorld's downloaded game files can generate themselves)."""

from __future__ import annotations

import re
from pathlib import Path

from agenttuning.envs.base import EnvDefinition, parse_payload
from agenttuning.envs.derivation import stable_int
from agenttuning.envs.household import games
from agenttuning.envs.household.env import GIVE_UP, MAX_COMMAND_CHARS, HouseholdEnv
from agenttuning.envs.household.games import LEVELS, AnyPayload, HouseholdPayload, SpecPayload
from agenttuning.envs.household.spec import spec_thought
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You are in a house, playing a text game. Your task is to cook a meal and eat it: find the cookbook in the kitchen \
and read its recipe, gather the ingredients it lists (some may be in other rooms), prepare each one exactly as the \
recipe says (slice, dice or chop it with a knife; fry it on a stove, roast it in an oven, grill it on a BBQ), then \
prepare the meal and eat it. Preparing an ingredient in a way the recipe does not ask for, or eating one, loses the \
game.

In every turn, first think about what to do next, then give exactly one command, in this form:
Thought: <your reasoning>
Action: <one command>

After every observation you see the AVAILABLE COMMANDS; your command must be one of them, written as listed, for \
example:
Action: take knife from table
A command that is not available is not carried out and still uses a turn. "{give_up}" ends the game as lost. \
You have at most {turns} turns."""

_DIRECTIONS = {"north", "south", "east", "west"}
_COOK = {"stove": "fry", "oven": "roast", "bbq": "grill"}


def thought_for(command: str) -> str:
    """A short, true reason for a walkthrough command, from what the command does (the expert's Thought).

    >>> thought_for("cook red apple with stove")
    'The recipe says to fry the red apple, so I cook it on the stove.'
    """
    words = command.split()
    verb, rest = words[0], " ".join(words[1:])
    if verb == "go" and rest in _DIRECTIONS:
        return f"What I still need is not here; I go {rest}."
    if command == "examine cookbook":
        return "The cookbook has the recipe: I read it to learn the ingredients and how to prepare them."
    if command == "inventory":
        return "First I check what I am carrying."
    if command == "prepare meal":
        return "Every ingredient is gathered and prepared as the recipe says, so I prepare the meal."
    if command == "eat meal":
        return "The meal is ready; eating it finishes the task."
    m = re.fullmatch(r"(slice|dice|chop) (.+) with (.+)", command)
    if m:
        return f"The recipe says to {m[1]} the {m[2]}; I do it with the {m[3]}."
    m = re.fullmatch(r"cook (.+) with (.+)", command)
    if m:
        how = _COOK.get(m[2])
        reason = f"The recipe says to {how} the {m[1]}" if how else f"The recipe says to cook the {m[1]}"
        return f"{reason}, so I cook it on the {m[2]}." if m[2] == "stove" else f"{reason}, so I cook it in the {m[2]}."
    if verb == "take":
        item = rest.split(" from ")[0]
        if item == "knife":
            return "I need the knife to cut ingredients, so I take it."
        return f"The {item} is needed for the recipe, so I take it."
    if verb == "drop":
        return f"The {rest} is not needed now; I drop it to keep my hands free."
    if verb == "open":
        return f"The {rest} is closed; I open it."
    return f"Next step of my plan: {command}."


class HouseholdDefinition(EnvDefinition[HouseholdPayload]):
    """TextWorld cooking games generated from fixed seeds across four difficulty levels; a game is generated (and
    cached on disk) the first time one of its episodes starts, so listing the tasks generates nothing.

    ``n_train`` and ``n_test`` size the splits (the registered family: 300 and 100); a smaller definition takes the
    first tasks of the same lists, so its games are the registered family's. ``cache_dir`` overrides the cache
    (default ``$AGENTTUNING_CACHE/household``)."""

    name = "household"
    version = 1
    test_sample = 4  # the conformance test plays one game per level; `agenttuning check` plays all 100
    description = "Cook and eat a meal in a generated text-adventure house (TextWorld cooking games; ALFWorld-style)."
    # ALFWorld's episodes allow 50 steps; the walkthroughs here are 5 to about 25 commands, so 50 is at least twice
    # the longest expert episode and leaves room to explore
    max_turns = 50
    env_class = HouseholdEnv

    def __init__(self, n_train: int = 300, n_test: int = 100, cache_dir: str | Path | None = None):
        self.n_train, self.n_test = n_train, n_test
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        """Seeds from SHA-256 of (split, index), levels in turn; test seeds never equal a train seed, and test games
        use TextWorld's test foods and preparations, train games its train ones. Nothing is generated here."""
        out: dict[str, list[Task]] = {}
        train_seeds: set[int] = set()
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            tasks: list[Task] = []
            i = 0
            while len(tasks) < n:
                seed = stable_int("household-seed", split, str(i)) % 2**31
                i += 1
                if split == "test" and seed in train_seeds:
                    continue
                if split == "train":
                    train_seeds.add(seed)
                level = LEVELS[len(tasks) % len(LEVELS)]
                payload = HouseholdPayload(seed=seed, level=level, food_split=split)  # type: ignore[arg-type]
                tasks.append(Task(
                    id=f"household-{split}-{len(tasks):05d}", env=self.id, split=split,  # type: ignore[arg-type]
                    instruction=f"Cook and eat the meal of household game {seed} (level {level.name}).",
                    payload=payload.model_dump()))
            out[split] = tasks
        return out

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(give_up=GIVE_UP, turns=self.max_turns)

    # --- episodes ------------------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """textworld (the ``household`` extra) not installed, if so."""
        return games.unavailable_reason()

    def payload(self, task: Task) -> AnyPayload:  # type: ignore[override]
        """The task's payload: a cooking game's :class:`HouseholdPayload` or a self-instructed :class:`SpecPayload`
        (the episode validates either, as :class:`~.games.HouseholdTaskPayload`)."""
        return parse_payload(self.env_class.payload_model, task).root  # type: ignore[attr-defined]

    def expert(self, task: Task, history: list[Turn]) -> str:
        """The game's walkthrough (recorded by TextWorld's generator, or a spec's own), one command a turn, with its
        reason."""
        done = sum(1 for t in history if t.role == "assistant")
        payload = self.payload(task)
        steps = games.walkthrough(payload, self.cache_dir)
        if done >= len(steps):
            return f"Thought: My plan is used up without a win; I stop.\nAction: {GIVE_UP}"
        thought = spec_thought if isinstance(payload, SpecPayload) else thought_for
        return f"Thought: {thought(steps[done])}\nAction: {steps[done]}"

    def wrong_answer(self, task: Task) -> str:
        return f"Thought: I will stop here.\nAction: {GIVE_UP}"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then commands a game parser might choke on or that are not available."""
        return super().adversarial_actions(task) + [
            "eat meal",  # not available at the start
            "go north " * 30,
            "x" * (MAX_COMMAND_CHARS + 1),
            "look\nGIVE UP",  # only the first line counts
            "restart", "quit", "save", "restore", "undo", "script", "verbose",  # interpreter meta-commands
            "take all", "examine " + "cookbook " * 20,
        ]
