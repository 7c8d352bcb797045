"""The action language of the ``miniwob`` family, parsed strictly and in one left-to-right pass.

Actions name an element by the ``[ref]`` the page rendering shows::

    click(12)
    type(7, "Ignacio")        # clears the field, then types the text key by key
    select(4, "Iceland")      # chooses the option of a drop-down list (select element) with that text
    give_up()                 # ends the episode as failed (MiniWoB's own time-out: raw reward -1)

The text argument is a JSON string literal (double quotes; ``\\"`` and ``\\\\`` escapes), read with
``json.loads`` and nothing else. An action is one line of at most :data:`MAX_ACTION_CHARS` characters; anything else
(another verb, a missing parenthesis, a ref that is not a number) is an :class:`ActionError` whose message becomes the
invalid-action feedback. No regular expression runs on the model's text, so a hostile reply cannot make parsing slow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_ACTION_CHARS = 300
MAX_TEXT_CHARS = 200  # typed or selected text; MiniWoB's longest expected input is far shorter
MAX_REF_DIGITS = 6
VERBS = ("click", "type", "select", "give_up")
ACTION_HELP = 'click(REF), type(REF, "TEXT"), select(REF, "OPTION") or give_up()'


class ActionError(ValueError):
    """The action cannot be parsed; the message says why (it is shown to the agent)."""


@dataclass(frozen=True)
class Action:
    verb: str
    ref: int | None = None
    text: str | None = None


def _text_argument(raw: str) -> str:
    if not (len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"'):
        raise ActionError('the text must be a double-quoted string, like "Submit"')
    try:
        value = json.loads(raw)
    except ValueError:
        raise ActionError("the text is not a valid double-quoted string (escape \" and \\ with a backslash)") from None
    if not isinstance(value, str):
        raise ActionError("the text must be a double-quoted string")
    if len(value) > MAX_TEXT_CHARS:
        raise ActionError(f"the text is longer than {MAX_TEXT_CHARS} characters")
    for ch in value:
        # typed as key presses: control characters, WebDriver's private-use key codes and characters outside the
        # Basic Multilingual Plane (which ChromeDriver cannot type) are refused rather than sent
        if not ch.isprintable() or "\ue000" <= ch <= "\uf8ff" or ord(ch) > 0xFFFF:
            raise ActionError(f"the text holds a character that cannot be typed ({ascii(ch)})")
    return value


def parse_action(action: str) -> Action:
    """The action in ``action`` (already stripped), or :class:`ActionError`.

    >>> parse_action('type(7, "Ignacio")')
    Action(verb='type', ref=7, text='Ignacio')
    >>> parse_action("click( 12 )")
    Action(verb='click', ref=12, text=None)
    >>> parse_action("click(twelve)")
    Traceback (most recent call last):
    ...
    agenttuning.envs.miniwob.actions.ActionError: the element reference must be a number, like click(12)
    """
    if not action:
        raise ActionError(f"the action is empty; use {ACTION_HELP}")
    if len(action) > MAX_ACTION_CHARS:
        raise ActionError(f"the action is longer than {MAX_ACTION_CHARS} characters")
    if "\n" in action or "\r" in action:
        raise ActionError("give exactly one action, on one line")
    open_at = action.find("(")
    if open_at < 0 or not action.endswith(")"):
        raise ActionError(f"the action must look like {ACTION_HELP}")
    verb = action[:open_at].strip().lower()
    if verb not in VERBS:
        raise ActionError(f"unknown action {verb[:40]!r}; use {ACTION_HELP}")
    inner = action[open_at + 1:-1].strip()
    if verb == "give_up":
        if inner:
            raise ActionError("give_up() takes no argument")
        return Action(verb)
    comma = inner.find(",")
    ref_text, rest = (inner, None) if comma < 0 else (inner[:comma].strip(), inner[comma + 1:].strip())
    if not ref_text.isascii() or not ref_text.isdigit() or len(ref_text) > MAX_REF_DIGITS:
        raise ActionError(f"the element reference must be a number, like {verb}(12)")
    ref = int(ref_text)
    if verb == "click":
        if rest is not None:
            raise ActionError("click takes only the element reference, like click(12)")
        return Action(verb, ref)
    if rest is None:
        raise ActionError(f'{verb} needs the element reference and a text, like {verb}({ref}, "...")')
    return Action(verb, ref, _text_argument(rest))
