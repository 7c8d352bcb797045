"""AgentBench's comparison of a DB question's answer with its label, without ``eval``.

AgentBench (v0.2, the release AgentTuning evaluated with: ``src/server/tasks/dbbench/__init__.py``, the
``metrics`` of ``DBBench``) grades a question so:

1. the answer is the text after ``Final Answer:`` on its line; it is evaluated as Python and made a list
   (``list(eval(text))``), and when that fails (a name, a number, a syntax error) the answer is the one-element
   list of the text itself;
2. when both the answer and the label hold one item, they match if both read as floats and are equal
   (``float(a) == float(b)``, no tolerance), or else if they are equal as they are (so ``"Paris"`` does not match
   ``"paris"``, and a tuple never matches a label string);
3. otherwise they match if they are equal as sets (order and repeats do not count; an item that cannot be put in a
   set fails the answer).

Here :func:`parse_answer` reads the answer with :func:`ast.literal_eval` instead of ``eval``: a literal (a list, a
tuple, a string, a number) reads the same; anything else is text, as AgentBench's own fallback would have it (an
expression such as ``[1+1]`` is text here where ``eval`` computed it; no task's label asks for one). So
``Final Answer: "Paris"`` is a list of five letters here too, as ``list(eval('"Paris"'))`` is. Two differences,
both because these tables keep numbers as numbers where AgentBench's MySQL tables were all text: the text of a
non-literal answer is read stripped (AgentBench kept the space after the colon, so ``Final Answer: Paris`` never
matched there), and in the set comparison a number counts as its text (``[17, 20]`` matches the label
``["17", "20"]``, the answer an agent shown MySQL's ``('17',)`` would have given).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from agenttuning.envs.db.grading import MAX_ANSWER_CHARS


def parse_answer(text: str) -> list[Any]:
    """An answer's text (after ``Final Answer:``, its first line) as AgentBench's list of items; never evaluates.

    >>> parse_answer('["a", "b"]'), parse_answer("42"), parse_answer("Paris"), parse_answer("('x',)")
    (['a', 'b'], ['42'], ['Paris'], ['x'])
    >>> parse_answer("__import__('os').system('id')")
    ["__import__('os').system('id')"]
    """
    text = text.split("\n", 1)[0].strip()
    if len(text) > MAX_ANSWER_CHARS:
        return [text]
    try:
        value = ast.literal_eval(text)
    except Exception:  # noqa: BLE001 - syntax, recursion depth, memory: not a literal, so the text itself
        return [text]
    try:
        return list(value)
    except TypeError:  # a number, None, True: not iterable, so the text itself (as AgentBench's fallback)
        return [text]


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _set_item(value: Any) -> Any:
    """An item as the set comparison sees it: a number as its text (see the module docs)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def answers_match(answer: Sequence[Any], label: Sequence[Any]) -> bool:
    """AgentBench's rule (see the module docs): one item each, as floats or as they are; else as sets.

    >>> answers_match(["1"], ["1.0"]), answers_match(["b", "a", "a"], ["a", "b"]), answers_match(["paris"], ["Paris"])
    (True, True, False)
    >>> answers_match([17, 20], ["20", "17"]), answers_match([("Giza", 1)], ["Giza"]), answers_match([], ["x"])
    (True, False, False)
    """
    if len(answer) == 1 and len(label) == 1:
        a, b = _float(answer[0]), _float(label[0])
        if a is not None and b is not None:
            return a == b
        return bool(answer[0] == label[0])
    try:
        return {_set_item(a) for a in answer} == {_set_item(b) for b in label}
    except TypeError:  # an unhashable item (a list inside the answer)
        return False
