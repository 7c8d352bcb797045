"""One ``miniwob`` episode: a MiniWoB++ task page in a pooled headless Chromium, played through element actions.

``start`` takes a browser from the process-wide pool (:mod:`.browser`), loads the task's page if needed, seeds and
generates the problem with MiniWoB's time limit lifted, and shows ``Task: <utterance>`` and the rendered page. Each
action (:mod:`.actions`) must name an element shown on the current page; a parse error, an unknown reference or an
element that refuses the action is invalid-action feedback and the episode goes on. When the page's own grader ends
the episode, the score is MiniWoB's *raw* reward (without the time discount, which would punish a slow model for
thinking): success when it is above 0, reward ``max(0, raw)``, so MiniWoB's -1 (wrong) becomes 0 and a full solve 1.
``give_up()`` ends the episode as MiniWoB's time-out does (raw -1). The browser goes back to the pool at ``release``
(at the next reset, or ``close``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from agenttuning.envs.base import EpisodeEnv, StepResult
from agenttuning.envs.miniwob import browser as browsers
from agenttuning.envs.miniwob.actions import ActionError, parse_action
from agenttuning.envs.miniwob.render import render_dom
from agenttuning.envs.miniwob.tasks import MiniwobPayload
from agenttuning.schema import Task

if TYPE_CHECKING:
    from agenttuning.envs.miniwob.definition import MiniwobDefinition


def score(raw_reward: Any) -> tuple[float, bool]:
    """MiniWoB's raw reward (-1..1; partial credit in between on some tasks) as (reward in [0, 1], success).

    >>> score(1), score(-1.0), score(0.25)
    ((1.0, True), (0.0, False), (0.25, True))
    """
    try:
        raw = float(raw_reward)
    except (TypeError, ValueError):
        raw = -1.0
    raw = min(1.0, max(-1.0, raw))
    return max(0.0, raw), raw > 0


def observation_text(snapshot: dict[str, Any]) -> tuple[str, set[int]]:
    page, refs = render_dom(snapshot.get("dom"), snapshot.get("extra"))
    utterance = " ".join(str(snapshot.get("utterance") or "").split())[:500]
    return f"Task: {utterance}\n\nPage:\n{page}", refs


class MiniwobEnv(EpisodeEnv[MiniwobPayload]):
    """An episode of one curated MiniWoB++ task, seeded."""

    definition: MiniwobDefinition

    def __init__(self, definition: MiniwobDefinition):
        super().__init__(definition)
        self._browser: browsers.Browser | None = None
        self._refs: set[int] = set()
        self._cancel = threading.Event()  # set by interrupt(): a wait for a browser gives up, an action is not run

    def start(self, task: Task, payload: MiniwobPayload) -> str:
        self._cancel.clear()
        self._browser = browsers.pool().acquire(payload.task, self._cancel)
        try:
            snapshot = self._browser.start(payload.task, payload.seed)
        except Exception as e:
            self._browser.broken = True
            raise browsers.BrowserError(f"{payload.task} (seed {payload.seed}) did not start: "
                                        f"{type(e).__name__}: {str(e)[:300]}") from None
        text, self._refs = observation_text(snapshot)
        return text

    def act(self, action: str) -> StepResult:
        browser = self._browser
        assert browser is not None
        try:
            parsed = parse_action(action)
        except ActionError as e:
            return self.invalid(str(e))
        if self._cancel.is_set():
            self._cancel.clear()
            return StepResult("The action was interrupted and not carried out.", info={"interrupted": True})
        if parsed.ref is not None and parsed.ref not in self._refs:
            return self.invalid(f"there is no element [{parsed.ref}] on the page")
        try:
            problem = self._perform(browser, parsed.verb, parsed.ref, parsed.text)
            snapshot = browser.snapshot()
        except Exception as e:  # the browser failed (crashed, hung past the command timeout): the episode cannot go on
            browser.broken = True
            return self.final(0.0, False, "The browser failed; the episode is over.",
                              error=f"{type(e).__name__}: {str(e)[:300]}")
        if snapshot.get("done"):
            reward, success = score(snapshot.get("raw_reward"))
            return self.final(reward, success, "The task is over.", raw_reward=snapshot.get("raw_reward"),
                              reason=str(snapshot.get("reason"))[:200], action=action[:200])
        text, self._refs = observation_text(snapshot)
        if problem is not None:
            return self.invalid(problem)
        return StepResult(text)

    def _perform(self, browser: browsers.Browser, verb: str, ref: int | None, text: str | None) -> str | None:
        """Run one parsed action; why it could not be done, or None."""
        if verb == "give_up":
            browser.give_up()
            return None
        assert ref is not None
        if verb == "click":
            return None if browser.click(ref) else f"element [{ref}] cannot be clicked"
        if verb == "select":
            return browser.select(ref, text or "")
        return None if browser.type(ref, text or "") else f"element [{ref}] cannot be typed into"

    def interrupt(self) -> None:
        """Make a wait for a browser give up and the next action return unrun (a browser command itself is bounded
        by the command timeout, so a running one returns on its own)."""
        self._cancel.set()

    def release(self) -> None:
        browser, self._browser = self._browser, None
        self._refs = set()
        if browser is not None:
            browsers.pool().release(browser)
