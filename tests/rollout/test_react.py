"""ReAct reply parsing: the tolerant rules, the same answers as the original patterns, linear time on any reply."""

from __future__ import annotations

import random
import re
import time

import pytest

from agenttuning.rollout.react import ParseError, parse_reply

# the original patterns: simple and right, but quadratic on many lines of marks; kept as the reference semantics
_MARK = r"[*_#\s]*"
_REF_ACTION = re.compile(rf"^{_MARK}action{_MARK}:{_MARK}", re.IGNORECASE | re.MULTILINE)
_REF_THOUGHT = re.compile(rf"^{_MARK}thought{_MARK}:[*_\s]*", re.IGNORECASE)
_REF_RUN_ON = re.compile(rf"^{_MARK}(observation|thought){_MARK}:", re.IGNORECASE | re.MULTILINE)


def reference(text: str) -> tuple[str, str] | str:
    m = _REF_ACTION.search(text)
    if m is None:
        return "no action"
    thought = _REF_THOUGHT.sub("", text[: m.start()].strip(), count=1).strip()
    action = text[m.end() :]
    run_on = _REF_RUN_ON.search(action)
    if run_on is not None:
        action = action[: run_on.start()]
    action = action.strip()
    return (thought, action) if action else "empty action"


def parsed(text: str) -> tuple[str, str] | str:
    try:
        p = parse_reply(text)
    except ParseError as e:
        return "no action" if "no 'Action:'" in str(e) else "empty action"
    return p.thought, p.action


@pytest.mark.parametrize(
    "text, thought, action",
    [
        ("Thought: look\nAction: lookup a", "look", "lookup a"),
        ("**Thought:** hmm\n**Action:** Answer\nObservation: invented", "hmm", "Answer"),
        ("thinking first\n\n# ACTION :  lookup b\n*Thought*: more", "thinking first", "lookup b"),
        ("Thought: x\n**\n__\nAction: y", "x", "y"),  # mark-only lines before the marker belong to neither
        ("Action: Answer\n**\nObservation: made up", "", "Answer"),
        ("see the Action: inline\nAction: real", "see the Action: inline", "real"),
    ],
)
def test_tolerant_parsing(text, thought, action):
    assert parse_reply(text) == type(parse_reply(text))(thought=thought, action=action)


@pytest.mark.parametrize("text", ["no marker here", "xAction: y", "Action:   \n", "Action:\nObservation: z"])
def test_replies_without_a_usable_action_are_parse_errors(text):
    with pytest.raises(ParseError):
        parse_reply(text)


def test_same_answers_as_the_original_patterns_on_random_replies():
    tokens = ["*", "_", "#", " ", "\n", "\t", "\r\n", "\u3000", "Action", "action", "ACTION", "Thought", "thought",
              "Observation", ":", "x", "yz", "acti", "on", "a", "**"]  # fmt: skip
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 16)))
        assert parsed(text) == reference(text), repr(text)


ADVERSARIAL = {
    "star lines": "*\n" * 500_000,
    "underscore lines": "_ \n" * 340_000,
    "one long heading": "#" * 1_000_000,
    "marker repeated": "Action:" * 150_000,
    "marker on every line": "\nAction: x" * 100_000,
    "run-on after marks": "Action: a\n" + "*\n" * 500_000 + "x",
    "mixed marks then marker": "* _ # \n" * 160_000 + "Action",
    "markers mid-line": "x action:" * 110_000,
    "thought labels": "Thought:" * 130_000 + "\nAction: y",
}


@pytest.mark.timeout(30)  # the old patterns took hours here: fail instead of hanging
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_parsing_is_linear_time_on_adversarial_megabyte_replies(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 990_000
    t0 = time.perf_counter()
    parsed(text)
    assert time.perf_counter() - t0 < 1.0
