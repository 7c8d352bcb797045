"""One ``sciworld`` episode: a ScienceWorld game, played one command at a time on a pooled JVM.

The agent's action is one ScienceWorld command (``open door to kitchen``, ``focus on red wire``, ``wait1``). It is
checked here first (one line, at most :data:`MAX_COMMAND_CHARS` printable ASCII characters: ScienceWorld's commands
are plain words) and then sent to the simulator as is; the simulator's "No known action matches that input." becomes
the invalid-action feedback, with the command templates ScienceWorld knows, and uses a turn. Nothing else asks the
simulator for the valid actions, which would cost 25 to 250 ms a step.

Scoring follows ScienceWorld: its score runs from 0 to 100 as the task's sub-goals are met; completing the task ends
the episode as a success; a negative score (ScienceWorld's failure, e.g. focusing on the wrong object) ends it as a
failure. Each step's reward is the change of the score, clipped below at 0, divided by 100, so an episode's rewards
add up to its final score / 100 (0 on failure): the partial credit AgentGym and AgentBoard report for SciWorld. The
step that spends the turn budget is truncated with reward 0 (the episode base's rule), so a truncated episode's total
is its score before that last turn. ``give up`` ends the episode as failed, keeping the score reached.
"""

from __future__ import annotations

import math
import re
import threading
from typing import TYPE_CHECKING

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.sciworld import jvm
from agenttuning.envs.sciworld.tasks import SciworldPayload
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.sciworld.definition import SciworldDefinition

MAX_COMMAND_CHARS = 200  # the longest gold command is under 80 characters
MAX_OBSERVATION_CHARS = 4000
GIVE_UP = "give up"
NO_MATCH = "No known action matches that input."
_PRINTABLE = re.compile(r"[ -~]*")  # printable ASCII: ScienceWorld's parser knows nothing else


def normalise_command(action: str) -> str:
    """The command as sent: the first line, lower case, single spaces, no final period.

    >>> normalise_command("  Open   Door to Kitchen.\\nmore")
    'open door to kitchen'
    """
    first = action.split("\n", 1)[0]
    return " ".join(first.lower().split()).rstrip(".").strip()


def command_problem(command: str) -> str | None:
    """Why ``command`` is not sent to the simulator (empty, too long, not printable ASCII), or None."""
    if not command:
        return "the action is empty"
    if len(command) > MAX_COMMAND_CHARS:
        return f"the command is longer than {MAX_COMMAND_CHARS} characters"
    if not _PRINTABLE.fullmatch(command):
        return "the command has characters other than printable ASCII (letters, digits, punctuation, spaces)"
    return None


def bounded(text: str) -> str:
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[: MAX_OBSERVATION_CHARS - 4] + " ..."


class SciworldEnv(EpisodeEnv[SciworldPayload]):
    """An episode of one ScienceWorld game. Holds a pooled JVM from reset to close."""

    definition: SciworldDefinition

    def __init__(self, definition: SciworldDefinition):
        super().__init__(definition)
        self._sim: jvm.Simulator | None = None
        self._stop = threading.Event()
        self._score = 0  # the last score, clipped below at 0
        self._given = 0.0  # the rewards given so far, added up in order
        self._templates: list[str] = []
        self._calling = False  # a simulator call is running: what interrupt() stops, and only then

    def start(self, task: Task, payload: SciworldPayload) -> str:
        self._stop.clear()  # an interrupt() belongs to the call it stopped, not to the next episode
        sim = jvm.acquire(self._stop)
        self._sim = sim
        self._calling = True
        try:
            sim.load(payload.task_name, payload.variation)
            description = sim.task_description()
            look = sim.reset()
        except jvm.SimulatorGone:
            raise RuntimeError(f"task {task.id}: the ScienceWorld JVM was stopped while the game loaded") from None
        finally:
            self._calling = False
        self._score, self._given = 0, 0.0
        return bounded(f"{description.strip()}\n\n{look.strip()}")

    def act(self, action: str) -> StepResult:
        assert self._sim is not None
        command = normalise_command(action)
        problem = command_problem(command)
        if problem is not None:
            return self.invalid(problem)
        if command == GIVE_UP:
            return self.final(0.0, False, "You gave up; the task is not done.", command=command, score=self._score)
        self._stop.clear()  # an interrupt() at rest between steps is a no-op; it stops only a running call
        self._calling = True
        try:
            observation, score, completed = self._sim.step(command)
        except jvm.SimulatorGone:  # interrupt() killed the JVM under the step: the episode cannot go on
            return self.final(0.0, False, "The step was interrupted; the episode is over.", command=command,
                              interrupted=True)
        finally:
            self._calling = False
        if observation.strip() == NO_MATCH:
            return self.invalid(f"{command[:80]!r} is not a ScienceWorld command. Commands: {self._commands()}")
        self._score = max(score, 0)
        reward = self._reward_to(self._score / 100)
        info = {"score": score, "command": command}
        if score < 0:
            return self.final(reward, False, bounded(observation) + "\n(The task failed.)", **info)
        if completed:
            return self.final(reward, True, bounded(observation), **info)
        return StepResult(bounded(observation), reward, info=info)

    def _reward_to(self, total: float) -> float:
        """This step's reward, such that the rewards so far, added up in order from 0.0 as the rollout engine adds
        them, come to ``total`` (plain differences of hundredths can sum to 0.9999999999999999, not 1)."""
        reward = total - self._given
        while self._given + reward < total:
            reward = math.nextafter(reward, math.inf)
        self._given += reward
        return reward

    def _commands(self) -> str:
        """ScienceWorld's command templates (fetched once per episode, only when a command was not understood)."""
        if not self._templates and self._sim is not None:
            self._templates = [t for t in self._sim.action_templates() if t != "reset task"]
        return ", ".join(self._templates)

    def interrupt(self) -> None:
        """Stop a waiting reset (no JVM free) or a running step (its JVM is killed; the pool starts a new one)."""
        self._stop.set()
        sim = self._sim
        if sim is not None and self._calling:
            sim.kill()

    def release(self) -> None:
        sim, self._sim = self._sim, None
        if sim is not None:
            jvm.release(sim)
