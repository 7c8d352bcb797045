"""The ``sciworld`` environment family: ScienceWorld's elementary-science tasks (AgentTuning's held-out SciWorld).

Identity, prompt, tasks (:mod:`.tasks`), the expert (ScienceWorld's own gold action sequence, replayed with a short
reason for each command) and a wrong answer (``give up``)."""

from __future__ import annotations

import re
import threading

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.sciworld import jvm, tasks
from agenttuning.envs.sciworld.env import GIVE_UP, MAX_COMMAND_CHARS, SciworldEnv
from agenttuning.envs.sciworld.tasks import SciworldPayload
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You are an agent in ScienceWorld, a text simulation of a house with a kitchen, a workshop, a greenhouse and other \
rooms, in which you carry out elementary science tasks: find and classify things, mix substances, build electric \
circuits, measure temperatures, compare life spans. Each observation tells you what happened and what you see.

In every turn, first think about what to do next, then give exactly one command, in this form:
Thought: <your reasoning>
Action: <one command>

Commands (OBJ is an object, a room or a door as the observations name it):
look around | look at OBJ | look in OBJ | inventory | task (repeat the task)
go to OBJ (a room next to this one) | open OBJ | close OBJ (doors and containers)
pick up OBJ | put down OBJ | move OBJ to OBJ | pour OBJ in OBJ | dunk OBJ in OBJ | mix OBJ
activate OBJ | deactivate OBJ | connect OBJ to OBJ | disconnect OBJ | use OBJ on OBJ
read OBJ | eat OBJ | flush OBJ | wait (10 time steps) | wait1 (1 time step)
focus on OBJ: marks the object the task is about. Focus only on the object the task asks for: focusing on a wrong \
one fails the task at once.
When a command is ambiguous you are shown numbered choices; answer with the number alone, e.g. "Action: 0".

For example:
Action: open door to kitchen
A command that is not understood is not carried out and still uses a turn. "{give_up}" ends the task unfinished. \
You have at most {turns} turns."""

EXTRA_WAITS = 2  # after its plan, the expert waits this many ticks for a late effect before it gives up
_FOCUS = re.compile(r"focus on (.+)")


def thought_for(command: str) -> str:
    """A short, true reason for a gold-path command, from what the command does (the expert's Thought).

    >>> thought_for("go to kitchen")
    'What I need next is in the kitchen, so I go there.'
    """
    c = command.strip()
    m = _FOCUS.fullmatch(c)
    if m:
        return f"The task is about the {m[1]}; I focus on it."
    rules: list[tuple[str, str]] = [
        (r"look around", "I look around to see what is in this room."),
        (r"look at (.+)", "I look at the {0} to learn more about it."),
        (r"look in (.+)", "I look in the {0} to see what it holds."),
        (r"go to (.+)", "What I need next is in the {0}, so I go there."),
        (r"open (.+)", "The {0} is closed; I open it."),
        (r"close (.+)", "I close the {0}."),
        (r"pick up (.+)", "I need the {0}, so I pick it up."),
        (r"put down (.+)", "I no longer need to carry the {0}; I put it down."),
        (r"move (.+) to (.+)", "The {0} belongs in the {1} for the task, so I move it there."),
        (r"pour (.+) in (.+)", "I pour the {0} into the {1}."),
        (r"dunk (.+) in (.+)", "I dunk the {0} in the {1}."),
        (r"mix (.+)", "Everything is in the {0}; I mix it."),
        (r"activate (.+)", "I switch on the {0}."),
        (r"deactivate (.+)", "I switch off the {0}."),
        (r"connect (.+) to (.+)", "The circuit needs the {0} connected to the {1}."),
        (r"disconnect (.+)", "I disconnect the {0}."),
        (r"use (.+) on (.+)", "I use the {0} on the {1} to measure it."),
        (r"read (.+)", "I read the {0}."),
        (r"wait1?", "The process takes time, so I wait."),
        (r"inventory", "I check what I am carrying."),
        (r"\d+", "The command was ambiguous; choice {c} is the one I meant."),
    ]
    for pattern, text in rules:
        m = re.fullmatch(pattern, c)
        if m:
            return text.format(*m.groups(), c=c)
    return f"Next step of my plan: {c}."


class SciworldDefinition(EnvDefinition[SciworldPayload]):
    """ScienceWorld games from its own train and test variation lists (see :mod:`.tasks` for the selection)."""

    name = "sciworld"
    version = 1
    held_out = True  # AgentTuning's held-out SciWorld: evaluated, never trained on
    test_sample = 2  # the conformance test plays two games; `agenttuning check` plays every test task
    description = "Elementary science experiments in a text simulation (ScienceWorld; AgentTuning's held-out SciWorld)."
    # AgentGym's SciWorld episodes allow 30 rounds and AgentBoard's 30 steps; tasks.GOLD_LIMIT keeps every test
    # task's gold path within 25 of them
    max_turns = 30
    env_class = SciworldEnv

    def __init__(self, per_type: dict[str, int] | None = None):
        self.per_type = per_type
        self._gold: dict[str, list[str]] = {}  # task id -> gold path (the expert's plan), per definition
        self._expert_lock = threading.Lock()
        self._expert_sim: jvm.Simulator | None = None

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        """Both splits from the simulator (cached on disk); empty where the simulator cannot run, so listing the
        environments still works there (``unavailable_reason`` says why)."""
        if self.unavailable_reason() is not None:
            return {"train": [], "test": []}
        records = tasks.derive(self.per_type)
        out: dict[str, list[Task]] = {}
        for split, rows in records.items():
            out[split] = [
                Task(id=f"sciworld-{split}-{i:04d}", env=self.id, split=split,  # type: ignore[arg-type]
                     instruction=row["instruction"],
                     payload=SciworldPayload(task_name=row["task_name"], variation=row["variation"],
                                             gold_steps=row["gold_steps"]).model_dump())
                for i, row in enumerate(rows)]
        return out

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(give_up=GIVE_UP, turns=self.max_turns)

    # --- episodes ------------------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """scienceworld (the ``sciworld`` extra) not installed, or no suitable Java, if so."""
        state = vars(self)
        if "_unavailable" not in state:  # `java -version` costs a process start: asked once per definition
            state["_unavailable"] = jvm.unavailable_reason()
        return state["_unavailable"]

    def gold_path(self, task: Task) -> list[str]:
        """ScienceWorld's gold action sequence for ``task``, one that wins within the turn budget where a few
        generations give one (:func:`tasks.verified_gold`), found once per task on the expert's own JVM (not a
        pooled one: every pooled JVM may be held by an episode that is waiting for this expert)."""
        with self._expert_lock:
            if task.id not in self._gold:
                p = self.payload(task)
                if self._expert_sim is None or not self._expert_sim.alive:
                    self._expert_sim = jvm.Simulator()
                # a path within GOLD_LIMIT first (every test task has one), leaving turns for a late effect; then
                # any within the budget (a train task's may be longer and still fit)
                path = (tasks.verified_gold(self._expert_sim, p.task_name, p.variation, limit=tasks.GOLD_LIMIT)
                        or tasks.verified_gold(self._expert_sim, p.task_name, p.variation, limit=self.max_turns))
                if path is None:  # no path found that wins in time: the expert plays the last one generated
                    path = self._expert_sim.gold()
                self._gold[task.id] = path
            return self._gold[task.id]

    def expert(self, task: Task, history: list[Turn]) -> str:
        """The gold action sequence, one command a turn, with its reason."""
        done = sum(1 for t in history if t.role == "assistant")
        steps = self.gold_path(task)
        if done >= len(steps) + EXTRA_WAITS:
            return f"Thought: My plan is used up and the task is not done; I stop.\nAction: {GIVE_UP}"
        if done >= len(steps):  # the last effect can come a tick later in another JVM than in the expert's
            return "Thought: My plan is done; the last step may need a moment to take effect, so I wait.\nAction: wait1"
        return f"Thought: {thought_for(steps[done])}\nAction: {steps[done]}"

    def wrong_answer(self, task: Task) -> str:
        return f"Thought: I will stop here.\nAction: {GIVE_UP}"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then commands aimed at the simulator's parser and its meta-commands."""
        return super().adversarial_actions(task) + [
            "x" * (MAX_COMMAND_CHARS + 1),
            "look at " + "door " * 39,  # long but allowed: the parser must cope
            "focus on", "move to", "connect to to to", "pour in in", "0", "99999999999999999999", "-1",
            "reset task", "task", "wait", "look around\nfocus on agent",  # only the first line counts
            "open door to kitchen; focus on agent", "é ü 中文", "\t\r\x0b\x0c", "%s %n {} ${x} `id`",
        ]

    def close(self) -> None:
        """Stop the expert's JVM (the pooled ones stop at exit)."""
        with self._expert_lock:
            sim, self._expert_sim = self._expert_sim, None
        if sim is not None:
            sim.kill()
