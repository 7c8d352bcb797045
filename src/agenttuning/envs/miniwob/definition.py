"""The ``miniwob`` environment family: identity, prompt, tasks (curated MiniWoB++ task x seed), expert.

MiniWoB++ is one of AgentTuning's held-out tasks, so the family is declared held-out: its test split is for
evaluation. Tasks are (task name, seed) pairs; seeds come from SHA-256 of (task, split, index), and a test seed that
equals a train seed of the same task is skipped, so the splits never share a problem.
"""

from __future__ import annotations

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.derivation import stable_int
from agenttuning.envs.miniwob import browser
from agenttuning.envs.miniwob.actions import MAX_TEXT_CHARS
from agenttuning.envs.miniwob.env import MiniwobEnv
from agenttuning.envs.miniwob.experts import expert_reply
from agenttuning.envs.miniwob.tasks import CURATED, N_TEST_PER_TASK, N_TRAIN_PER_TASK, MiniwobPayload
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You are operating a small web page. Each observation gives the task ("Task: ...") and the page, one element per \
line with its reference number in brackets, for example:
[5] button#subbtn "Submit"
[7] input_checkbox unchecked
  "apple"
Quoted lines are text on the page; "value=" is what a field holds; a list shows its options.

In every turn, first think about what to do next, then give exactly one action, in this form:
Thought: <your reasoning>
Action: <one action>

The actions are:
click(REF) - click the element [REF] (buttons, links, checkboxes, tabs, fields: clicking a field focuses it)
type(REF, "TEXT") - clear the text field [REF] and type TEXT (a double-quoted string, at most {max_text} characters)
select(REF, "OPTION") - choose OPTION in the list [REF]
give_up() - stop; the task counts as failed
An action on an element that is not on the page is not carried out and still uses a turn. The task ends when the \
page decides it is done (usually when you press its submit button, or click the right element): a wrong choice ends \
it as failed. You have at most {turns} turns."""


class MiniwobDefinition(EnvDefinition[MiniwobPayload]):
    """Curated MiniWoB++ tasks, ``n_train`` and ``n_test`` seeds each (registered: 20 and 5)."""

    name = "miniwob"
    version = 1
    held_out = True  # AgentTuning evaluates on MiniWoB++ as a held-out task
    test_sample = 4  # the conformance test plays four different tasks; `agenttuning check` plays every test task
    description = "Operate small web pages in a headless browser (MiniWoB++ tasks, text rendering of the DOM)."
    # the longest expert episode (click-checkboxes: up to six boxes and Submit) is 7 actions; 15 is twice that
    max_turns = 15
    env_class = MiniwobEnv

    def __init__(self, n_train: int = N_TRAIN_PER_TASK, n_test: int = N_TEST_PER_TASK):
        self.n_train, self.n_test = n_train, n_test

    def derive_tasks(self) -> dict[str, list[Task]]:
        """Round-robin over the curated tasks (so the first few test tasks are of different kinds), seeds from
        SHA-256; nothing runs a browser here."""
        seeds: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
        for name in CURATED:
            train: list[int] = []
            i = 0
            while len(train) < self.n_train:
                seed = stable_int("miniwob-seed", name, "train", str(i)) % 2**31
                i += 1
                if seed not in train:
                    train.append(seed)
            test: list[int] = []
            i = 0
            while len(test) < self.n_test:
                seed = stable_int("miniwob-seed", name, "test", str(i)) % 2**31
                i += 1
                if seed not in train and seed not in test:
                    test.append(seed)
            seeds["train"][name], seeds["test"][name] = train, test
        out: dict[str, list[Task]] = {}
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            tasks: list[Task] = []
            for k in range(n):
                for name in CURATED:
                    seed = seeds[split][name][k]
                    tasks.append(Task(
                        id=f"miniwob-{split}-{name}-{k:03d}", env=self.id, split=split,  # type: ignore[arg-type]
                        instruction=f"MiniWoB++ {name}, seed {seed}: {CURATED[name]}.",
                        payload=MiniwobPayload(task=name, seed=seed).model_dump()))
            out[split] = tasks
        return out

    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(max_text=MAX_TEXT_CHARS, turns=self.max_turns)

    def unavailable_reason(self) -> str | None:
        """selenium or miniwob not installed, or chromium / a matching chromedriver missing, if so."""
        return browser.unavailable_reason()

    def expert(self, task: Task, history: list[Turn]) -> str:
        """The task's rule (:mod:`.experts`) on the latest observation."""
        observation = next((t.content for t in reversed(history) if t.role == "user"), "")
        done = sum(1 for t in history if t.role == "assistant")
        return expert_reply(self.payload(task).task, observation, done)

    def wrong_answer(self, task: Task) -> str:
        """Giving up: MiniWoB scores it -1 (its time-out), which is reward 0. (A wrong *click* needs the page, which
        a reply written before the episode does not have; the tests also check wrong clicks and submits score 0.)"""
        return "Thought: I will stop here.\nAction: give_up()"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then actions that stretch this family's grammar and the browser."""
        return super().adversarial_actions(task) + [
            "click(999999)", "click(-1)", "click(0)", "click(1e9)", "click(" + "9" * 5000 + ")",
            'type(4, "' + "a" * (MAX_TEXT_CHARS + 1) + '")',
            'type(4, "\\ue000\\ue007")',  # WebDriver's private-use key codes (Enter, ...)
            'type(4, "\\u0000")', 'type(4, "\U0001f600")', 'type(4, "unterminated)',
            'type(4, "a", "b")', 'select(4, "no such option")', "click(4)\nclick(5)",
            'type(4, "</script><script>alert(1)</script>")', "click(4); give_up()",
            "javascript:core.endEpisode(1)", "core.endEpisode(1, false)", "give_up(1)", "CLICK(4)",
        ]
