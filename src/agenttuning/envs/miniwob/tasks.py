"""Which MiniWoB++ tasks the ``miniwob`` family plays, why the others are left out, and the payload of a task.

A text agent sees the page as text (:mod:`.render`) and acts on elements by reference (:mod:`.actions`), so the
curated tasks are those that need only reading the page and clicking, typing and choosing on elements. Every curated
task has a rule-based expert (:mod:`.experts`) written from the task page's behaviour. The 108 other tasks of the
130 shipped are excluded for one of the reasons in :data:`EXCLUDED_BECAUSE` (each excluded task is listed under its
reason in ``docs/envs/miniwob.md``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# task name -> what the agent must do (for the docs and the task's instruction)
CURATED: dict[str, str] = {
    "click-test": "click the one button",
    "click-test-2": "click the named one of two buttons",
    "click-button": "click the button with the given text among other elements",
    "click-button-sequence": "click two buttons in order",
    "click-link": "click the link with the given text inside a paragraph",
    "click-checkboxes": "tick exactly the named checkboxes, then Submit",
    "click-option": "choose the named radio button, then Submit",
    "click-dialog": "close a dialog with its x button",
    "click-dialog-2": "click the named button of a dialog",
    "click-tab": "click the named tab",
    "click-tab-2": "open tabs until the named link shows, then click it",
    "click-widget": "click a widget of the named kind (button, text field, checkbox, ...)",
    # the -nodelay variants: the same tasks without jQuery UI's animation / 300 ms suggestion delay, which a
    # text agent acting once per observation would otherwise race
    "click-collapsible-nodelay": "expand a section, then Submit",
    "enter-text": "type the given text, then Submit",
    "enter-text-2": "type the given text in upper or lower case, then Submit",
    "enter-password": "type a password into both fields, then Submit",
    "focus-text": "focus the text field",
    "focus-text-2": "focus the n-th text field",
    "login-user": "type a username and a password, then Login",
    "choose-list": "choose the named item of a drop-down list, then Submit",
    "use-autocomplete-nodelay": "type a prefix, pick the suggestion that fits, then Submit",
    "email-inbox-delete": "delete the email of the named sender with its trash icon",
}

EXCLUDED_BECAUSE: dict[str, str] = {
    "gestures": "the task needs drawing, dragging, selecting text, scrolling or keyboard shortcuts, which element "
                "actions lack",
    "visual-only": "the answer is in shapes, colours, positions or pictures the text rendering does not carry",
    "timing": "the task depends on waiting, moving targets or real-time delays",
    "no expert written yet": "a text agent could do it, but no expert rule is written for it yet (multi-page forms, "
                       "search, calendars, terminals); adding one means a rule in experts.py and a line here",
}

N_TRAIN_PER_TASK = 20
N_TEST_PER_TASK = 5


class MiniwobPayload(BaseModel):
    """One episode: a curated MiniWoB++ task page and the seed its problem is generated from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(description="MiniWoB++ task name (the page's file name), one of the curated tasks")
    seed: int = Field(ge=0, lt=2**31, description="Math.seedrandom seed: the same seed gives the same problem")

    @field_validator("task")
    @classmethod
    def _curated(cls, value: str) -> str:
        if value not in CURATED:
            raise ValueError(f"{value!r} is not a curated MiniWoB++ task (see agenttuning.envs.miniwob.tasks)")
        return value
