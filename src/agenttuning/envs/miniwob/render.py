"""The text a text agent sees of a MiniWoB page: one line per element that matters, with its reference number.

``core.getDOMInfo`` gives the visible DOM as a tree of dicts (tag, ref, id, classes, text, value, focused, children;
text that shares a parent with elements comes as ``t`` pseudo-elements). A line looks like::

    [5] button#subbtn "Submit"
    [7] input_checkbox unchecked
      "kZPcIH"

``[ref]`` is what ``click(ref)``, ``type(ref, ...)`` and ``select(ref, ...)`` take; refs are stable within an
episode and numbered afresh each episode (the same task and seed give the same refs). Lines are indented by the
depth of shown ancestors; a plain container (no text, value, id or attribute of its own) is not shown but its
children are. Every text is cut to :data:`MAX_TEXT_CHARS`, the page to :data:`MAX_LINES` lines and
:data:`MAX_CHARS` characters, with a note saying what was cut, so an observation is bounded whatever the page holds.
"""

from __future__ import annotations

import json
from typing import Any

MAX_TEXT_CHARS = 120
MAX_LINES = 150
MAX_CHARS = 6000
MAX_DEPTH = 40  # MiniWoB pages are shallow; a deeper tree is cut rather than recursed into
_INTERACTIVE = ("input", "button", "a", "select", "textarea", "label", "option")
_SKIP_IDS = {"wrap", "area"}  # every task's two outer containers: no information


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS] + "..."
    return json.dumps(text, ensure_ascii=False)


def element_line(node: dict[str, Any], extra: dict[str, Any]) -> str | None:
    """The line for one element, or None for a plain container (or a text pseudo-element without text).

    >>> element_line({"tag": "BUTTON", "ref": 5, "id": "subbtn", "text": "Submit"}, {})
    '[5] button#subbtn "Submit"'
    >>> element_line({"tag": "INPUT_checkbox", "ref": 7, "value": True, "classes": ""}, {})
    '[7] input_checkbox checked'
    >>> element_line({"tag": "DIV", "ref": 3, "id": "", "classes": ""}, {}) is None
    True
    """
    tag = str(node.get("tag", "")).lower()
    text = node.get("text")
    if tag == "t":
        return _quote(text) if text else None
    parts = [f"[{int(node.get('ref', 0))}] {tag}"]
    node_id = str(node.get("id") or "")
    if node_id and node_id not in _SKIP_IDS:
        parts[0] += f"#{node_id[:40]}"
    classes = node.get("classes")
    interesting = tag.split("_")[0] in _INTERACTIVE or bool(node_id and node_id not in _SKIP_IDS)
    if text:
        parts.append(_quote(text))
        interesting = True
    value = node.get("value")
    if isinstance(value, bool):
        parts.append("checked" if value else "unchecked")
    elif value is not None:
        parts.append(f"value={_quote(value)}")
    for key in ("title", "placeholder", "aria-label", "name"):
        if extra.get(key):
            parts.append(f"{key}={_quote(extra[key])}")
            interesting = True
    if "options" in extra:
        options = [_quote(o) for o in list(extra["options"])[:30]]
        parts.append(f"selected={_quote(extra.get('value', ''))} options=[{', '.join(options)}]")
    leaf = not node.get("children") and not text
    if isinstance(classes, str) and classes and (leaf or (interesting and tag in ("span", "div", "li", "h3", "td"))):
        parts.append(f"class={_quote(classes[:60])}")  # icons (a trash can, a star) are known only by their class
        interesting = True
    if isinstance(classes, str) and classes.startswith("ui-resizable-handle"):
        return None  # jQuery UI's resize grips around a dialog: eight lines of noise
    if node.get("focused"):
        parts.append("(focused)")
    return " ".join(parts) if interesting else None


def _merge_text(children: list[Any]) -> list[Any]:
    """Runs of text pseudo-elements (one per rendered line box) joined into one, so a sentence is one line.

    >>> _merge_text([{"tag": "t", "text": "a b"}, {"tag": "t", "text": "c"}, {"tag": "SPAN", "ref": 4}])
    [{'tag': 't', 'text': 'a b c'}, {'tag': 'SPAN', 'ref': 4}]
    """
    out: list[Any] = []
    for child in children[:2000]:  # no page needs more; a hostile one is cut
        if (isinstance(child, dict) and child.get("tag") == "t" and out and isinstance(out[-1], dict)
                and out[-1].get("tag") == "t"):
            out[-1] = {"tag": "t", "text": f"{out[-1].get('text', '')} {child.get('text', '')}"[:MAX_TEXT_CHARS * 2]}
        else:
            is_text = isinstance(child, dict) and child.get("tag") == "t"
            out.append({"tag": "t", "text": child.get("text", "")} if is_text else child)
    return out


def render_dom(dom: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> tuple[str, set[int]]:
    """The page as text, and the refs shown (the ones an action may name)."""
    extra = extra or {}
    lines: list[str] = []
    refs: set[int] = set()
    cut = False
    # iterative (no recursion limit on a hostile page): (node, shown-ancestor depth, tree depth)
    top = _merge_text((dom or {}).get("children") or [])
    stack: list[tuple[dict[str, Any], int, int]] = [(c, 0, 1) for c in reversed(top)]
    while stack:
        node, indent, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if len(lines) >= MAX_LINES:
            cut = True
            break
        line = element_line(node, extra.get(str(node.get("ref")), {}))
        if line is not None:
            lines.append("  " * min(indent, 8) + line)
            ref = node.get("ref")
            if isinstance(ref, int) and ref > 0:
                refs.add(ref)
        if depth < MAX_DEPTH:
            child_indent = indent + (line is not None)
            children = _merge_text(node.get("children") or [])
            stack.extend((c, child_indent, depth + 1) for c in reversed(children))
        else:
            cut = True
    text = "\n".join(lines) if lines else "(the page shows nothing)"
    if len(text) > MAX_CHARS:
        text, cut = text[:MAX_CHARS].rsplit("\n", 1)[0], True
    if cut:
        text += "\n(... the page is longer; the rest is not shown)"
    return text, refs
