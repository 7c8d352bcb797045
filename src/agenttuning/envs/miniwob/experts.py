"""The expert of every curated MiniWoB++ task: a rule per task, written from the task page's behaviour, that reads the
utterance and the rendered page (the same text the agent sees) and gives the next action.

Each rule is a function ``(utterance, page, done) -> (thought, action)`` where ``done`` is how many actions the
episode has taken; rules look at the current page first (a box already ticked is not clicked again), so they need
little memory. The expert only ever reads this family's own rendering (:mod:`.render`), parsed by :func:`parse_page`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_LINE = re.compile(r"^( *)\[(\d+)\] (\S+)(.*)$")
_ATTR = re.compile(r'(value|title|class|placeholder|name|selected)=("(?:[^"\\]|\\.)*")')


@dataclass
class Element:
    ref: int
    tag: str
    id: str = ""
    text: str = ""
    value: str | None = None
    checked: bool | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    label: str = ""  # for a checkbox or radio button: the text right after it in its label
    indent: int = 0


@dataclass
class Page:
    utterance: str
    elements: list[Element]

    def first(self, tag: str | None = None, text: str | None = None, **attrs: str) -> Element | None:
        for e in self.elements:
            if tag is not None and e.tag != tag:
                continue
            if text is not None and e.text != text:
                continue
            if any(e.attrs.get(k) != v for k, v in attrs.items()):
                continue
            return e
        return None

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]


class ExpertError(ValueError):
    """The page does not look as the task's rule expects (a bug in the rule or the rendering)."""


def parse_page(observation: str) -> Page:
    """The utterance and elements of an observation of this family (``Task: ...`` then the rendered page)."""
    lines = observation.split("\n")
    utterance = ""
    elements: list[Element] = []
    last_choice: Element | None = None
    for line in lines:
        if line.startswith("Task: "):
            utterance = line[len("Task: "):]
            continue
        m = _LINE.match(line)
        if m is None:
            stripped = line.strip()
            if stripped.startswith('"') and last_choice is not None and not last_choice.label:
                last_choice.label = json.loads(stripped)
            continue
        tag, _, el_id = m[3].partition("#")
        rest = m[4].strip()
        e = Element(ref=int(m[2]), tag=tag, id=el_id, indent=len(m[1]))
        if rest.startswith('"'):
            text, end = json.JSONDecoder().raw_decode(rest)
            e.text, rest = text, rest[end:]
        for key, raw in _ATTR.findall(rest):
            e.attrs[key] = json.loads(raw)
        e.value = e.attrs.get("value")
        words = _ATTR.sub("", rest).split()
        e.checked = True if "checked" in words else False if "unchecked" in words else None
        last_choice = e if tag in ("input_checkbox", "input_radio") else None
        elements.append(e)
    return Page(utterance, elements)


def _quoted(utterance: str, nth: int = 0) -> str:
    parts = utterance.split('"')
    if len(parts) < 2 * nth + 3:
        raise ExpertError(f"no quoted text #{nth + 1} in {utterance!r}")
    return parts[2 * nth + 1]


def _between(utterance: str, start: str, end: str) -> str:
    i = utterance.find(start)
    j = utterance.find(end, i + len(start))
    if i < 0 or j < 0:
        raise ExpertError(f"{utterance!r} does not hold {start!r} ... {end!r}")
    return utterance[i + len(start):j]


def _need(e: Element | None, what: str) -> Element:
    if e is None:
        raise ExpertError(f"the page has no {what}")
    return e


def _click(e: Element, why: str) -> tuple[str, str]:
    return why, f"click({e.ref})"


def _type(e: Element, text: str, why: str) -> tuple[str, str]:
    return why, f"type({e.ref}, {json.dumps(text)})"


def _submit(page: Page, label: str = "Submit") -> tuple[str, str]:
    button = page.first("button", label) or page.first("button", id="subbtn")
    button = button or next((e for e in page.all("button") if e.id == "subbtn"), None)
    return _click(_need(button, f"{label} button"), f"Everything is filled in; I click {label}.")


def _fill(page: Page, fields: list[tuple[Element, str]], submit: str) -> tuple[str, str]:
    """Type each field that does not hold its text yet, then press the submit button."""
    for element, text in fields:
        if element.value != text:
            return _type(element, text, f"The field [{element.ref}] must read {text!r}; I type it.")
    return _submit(page, submit)


def _by_id(page: Page, el_id: str) -> Element:
    return _need(next((e for e in page.elements if e.id == el_id), None), f"element #{el_id}")


# --- the rules ----------------------------------------------------------------------------------------------------
Rule = Callable[[str, Page, int], tuple[str, str]]


def click_test(u: str, page: Page, done: int) -> tuple[str, str]:
    return _click(_need(page.first("button"), "button"), "There is one button; I click it.")


def click_test_2(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _between(u, "Click button ", ".")
    return _click(_need(page.first("button", name), f"button {name}"), f"The task names button {name}.")


def click_button(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _quoted(u)
    return _click(_need(page.first("button", name), f"button {name!r}"), f"The button reading {name!r} is the one.")


def click_button_sequence(u: str, page: Page, done: int) -> tuple[str, str]:
    name = "ONE" if done == 0 else "TWO"
    return _click(_need(page.first("button", name), f"button {name}"), f"Next in the sequence is button {name}.")


def click_link(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _quoted(u)
    link = next((e for e in page.elements if e.text == name and "alink" in e.attrs.get("class", "")), None)
    return _click(_need(link, f"link {name!r}"), f"The link {name!r} is in the text; I click it.")


def _choices(page: Page, kind: str, wanted: set[str], submit: str = "Submit") -> tuple[str, str]:
    for e in page.all(kind):
        if (e.label in wanted) != bool(e.checked):
            return _click(e, f"{e.label!r} must be {'ticked' if e.label in wanted else 'cleared'}; I click it.")
    return _submit(page, submit)


def click_checkboxes(u: str, page: Page, done: int) -> tuple[str, str]:
    listed = _between(u, "Select ", " and click Submit")
    wanted = set() if listed == "nothing" else {w.strip() for w in listed.split(",")}
    return _choices(page, "input_checkbox", wanted)


def click_option(u: str, page: Page, done: int) -> tuple[str, str]:
    return _choices(page, "input_radio", {_between(u, "Select ", " and click Submit")})


def click_dialog(u: str, page: Page, done: int) -> tuple[str, str]:
    close = _need(page.first("button", title="Close"), "close button")
    return _click(close, "The dialog's x is its Close button.")


def click_dialog_2(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _quoted(u)
    if name == "x":
        return click_dialog(u, page, done)
    return _click(_need(page.first("button", name), f"button {name!r}"), f"The dialog's {name!r} button.")


def click_tab(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _between(u, "Click on ", ".")
    return _click(_need(page.first("a", name), f"tab {name!r}"), f"{name} is the tab to click.")


def click_tab_2(u: str, page: Page, done: int) -> tuple[str, str]:
    name = _quoted(u)
    link = next((e for e in page.elements if e.text == name and "alink" in e.attrs.get("class", "")), None)
    if link is not None:
        return _click(link, f"The link {name!r} is on this tab; I click it.")
    tabs = [e for e in page.all("a") if e.id.startswith("ui-id-")]
    if done + 1 >= len(tabs):
        raise ExpertError(f"no tab shows the link {name!r}")
    return _click(tabs[done + 1], f"The link {name!r} is not on this tab; I open the next one.")


_WIDGET_TAGS = {"button": "button", "text": "input_text", "textarea": "textarea", "checkbox": "input_checkbox",
                "radio": "input_radio"}


def click_widget(u: str, page: Page, done: int) -> tuple[str, str]:
    kind = _quoted(u)
    tag = _WIDGET_TAGS.get(kind)
    if tag is None:
        raise ExpertError(f"unknown widget kind {kind!r}")
    return _click(_need(page.first(tag), f"{kind} widget"), f"A {kind} widget is a {tag} element.")


def click_collapsible(u: str, page: Page, done: int) -> tuple[str, str]:
    if done == 0:
        header = _need(next((e for e in page.elements if e.tag == "h3"), None), "section header")
        return _click(header, "The section is collapsed; I expand it by clicking its header.")
    return _submit(page)


def enter_text(u: str, page: Page, done: int) -> tuple[str, str]:
    return _fill(page, [(_by_id(page, "tt"), _quoted(u))], "Submit")


def enter_text_2(u: str, page: Page, done: int) -> tuple[str, str]:
    word = _quoted(u)
    word = word.upper() if "upper case" in u else word.lower()
    return _fill(page, [(_by_id(page, "tt"), word)], "Submit")


def enter_password(u: str, page: Page, done: int) -> tuple[str, str]:
    word = _quoted(u)
    return _fill(page, [(_by_id(page, "password"), word), (_by_id(page, "verify"), word)], "Submit")


def focus_text(u: str, page: Page, done: int) -> tuple[str, str]:
    return _click(_by_id(page, "tt"), "Clicking the text field focuses it.")


def focus_text_2(u: str, page: Page, done: int) -> tuple[str, str]:
    ordinal = _between(u, "Focus into the ", " input textbox")
    n = int("".join(ch for ch in ordinal if ch.isdigit()) or 0)
    fields = page.all("input_text")
    if not 1 <= n <= len(fields):
        raise ExpertError(f"no text field number {n}")
    return _click(fields[n - 1], f"The {ordinal} text field; clicking it focuses it.")


def login_user(u: str, page: Page, done: int) -> tuple[str, str]:
    return _fill(page, [(_by_id(page, "username"), _quoted(u, 0)), (_by_id(page, "password"), _quoted(u, 1))],
                 "Login")


def choose_list(u: str, page: Page, done: int) -> tuple[str, str]:
    item = _between(u, "Select ", " from the list")
    box = _need(page.first("select"), "list")
    if box.attrs.get("selected") != item:
        return f"{item!r} must be chosen in the list.", f"select({box.ref}, {json.dumps(item)})"
    return _submit(page)


def use_autocomplete(u: str, page: Page, done: int) -> tuple[str, str]:
    prefix = _quoted(u, 0)
    suffix = _quoted(u, 1) if u.count('"') >= 4 else ""
    field_ = _by_id(page, "tags")
    value = field_.value or ""
    if value.startswith(prefix) and value.endswith(suffix) and value != prefix:
        return _submit(page)
    suggestions = [e for e in page.elements if e.tag in ("li", "div") and e.text.startswith(prefix)
                   and e.text.endswith(suffix) and e.ref != field_.ref]
    if suggestions:
        return _click(suggestions[0], f"{suggestions[0].text!r} starts with {prefix!r}"
                      + (f" and ends with {suffix!r}" if suffix else "") + "; I pick it.")
    return _type(field_, prefix, f"I type {prefix!r} to see the suggestions.")


def email_inbox_delete(u: str, page: Page, done: int) -> tuple[str, str]:
    sender = _between(u, "Find the email by ", " and click")
    at = next((i for i, e in enumerate(page.elements) if e.text == sender
               and "email-sender" in e.attrs.get("class", "")), None)
    if at is None:
        raise ExpertError(f"no email from {sender!r}")
    trash = next((e for e in page.elements[at:] if e.attrs.get("class") == "trash"), None)
    return _click(_need(trash, "trash icon"), f"The email from {sender} has this trash icon.")


RULES: dict[str, Rule] = {
    "click-test": click_test,
    "click-test-2": click_test_2,
    "click-button": click_button,
    "click-button-sequence": click_button_sequence,
    "click-link": click_link,
    "click-checkboxes": click_checkboxes,
    "click-option": click_option,
    "click-dialog": click_dialog,
    "click-dialog-2": click_dialog_2,
    "click-tab": click_tab,
    "click-tab-2": click_tab_2,
    "click-widget": click_widget,
    "click-collapsible-nodelay": click_collapsible,
    "enter-text": enter_text,
    "enter-text-2": enter_text_2,
    "enter-password": enter_password,
    "focus-text": focus_text,
    "focus-text-2": focus_text_2,
    "login-user": login_user,
    "choose-list": choose_list,
    "use-autocomplete-nodelay": use_autocomplete,
    "email-inbox-delete": email_inbox_delete,
}


def expert_reply(task_name: str, observation: str, done: int) -> str:
    """``Thought: ...`` / ``Action: ...`` for the current page of ``task_name``."""
    page = parse_page(observation)
    thought, action = RULES[task_name](page.utterance, page, done)
    return f"Thought: {thought}\nAction: {action}"
