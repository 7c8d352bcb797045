"""The miniwob family's parts that need no browser: the action grammar, the page rendering, scoring, the tasks."""

from __future__ import annotations

import time

import pytest

from agenttuning.envs.base import PayloadError
from agenttuning.envs.miniwob import definition
from agenttuning.envs.miniwob.actions import MAX_ACTION_CHARS, ActionError, parse_action
from agenttuning.envs.miniwob.env import score
from agenttuning.envs.miniwob.experts import RULES, parse_page
from agenttuning.envs.miniwob.render import MAX_CHARS, MAX_LINES, render_dom
from agenttuning.envs.miniwob.tasks import CURATED, N_TEST_PER_TASK, N_TRAIN_PER_TASK


@pytest.mark.parametrize("text, verb, ref, arg", [
    ("click(12)", "click", 12, None),
    ("click( 3 )", "click", 3, None),
    ('type(7, "Ig \\"nacio\\"")', "type", 7, 'Ig "nacio"'),
    ('select(4,"Czech Republic")', "select", 4, "Czech Republic"),
    ("give_up()", "give_up", None, None),
])
def test_well_formed_actions_parse(text, verb, ref, arg):
    a = parse_action(text)
    assert (a.verb, a.ref, a.text) == (verb, ref, arg)


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("click", "must look like"), ("click(x)", "must be a number"), ("click(-1)", "must be a number"),
    ("click(1, 2)", "only the element"), ('type(3)', "needs the element"), ("type(3, Ignacio)", "double-quoted"),
    ('type(3, "a" "b")', "not a valid"), ('type(3, "\\u0007")', "cannot be typed"),
    ('type(3, "\\ue007")', "cannot be typed"), ('type(3, "\U0001f600")', "cannot be typed"),
    ("click(1)\nclick(2)", "one line"), ("drag(1)", "unknown action"), ("give_up(now)", "no argument"),
    ("click(" + "9" * 50 + ")", "must be a number"), ("x" * (MAX_ACTION_CHARS + 1), "longer than"),
    ('type(3, "' + "a" * 201 + '")', "longer than 200"),
])
def test_malformed_actions_say_what_is_wrong(text, why):
    with pytest.raises(ActionError, match=why):
        parse_action(text)


def test_parsing_hostile_text_is_fast():
    hostile = ["click(" * 100_000, '"' * 1_000_000, "type(1, " + '\\"' * 500_000, "(" * 1_000_000 + ")"]
    t0 = time.perf_counter()
    for text in hostile:
        with pytest.raises(ActionError):
            parse_action(text)
    assert time.perf_counter() - t0 < 0.5


def test_rendering_is_bounded_however_big_or_deep_the_page():
    wide = {"tag": "BODY", "ref": 1, "children": [
        {"tag": "BUTTON", "ref": i, "text": "w" * 10_000, "children": []} for i in range(2, 5000)]}
    text, refs = render_dom(wide)
    assert len(text) <= MAX_CHARS + 100 and text.count("\n") <= MAX_LINES + 1
    assert "not shown" in text and '"' + "w" * 121 not in text  # each text is cut too
    deep: dict = {"tag": "SPAN", "ref": 1, "text": "bottom", "children": []}
    for i in range(2, 20_000):  # far deeper than Python's recursion limit
        deep = {"tag": "DIV", "ref": i, "id": f"d{i}", "children": [deep]}
    text, _ = render_dom({"tag": "BODY", "ref": 0, "children": [deep]})
    assert len(text) <= MAX_CHARS + 100 and "not shown" in text


def test_rendering_shows_refs_values_and_labels_and_the_expert_reads_it_back():
    dom = {"tag": "BODY", "ref": 1, "children": [{"tag": "DIV", "ref": 2, "id": "wrap", "children": [
        {"tag": "LABEL", "ref": 3, "children": [
            {"tag": "INPUT_checkbox", "ref": 4, "value": True, "children": []},
            {"tag": "t", "ref": -1, "text": "apple", "children": []}]},
        {"tag": "INPUT_text", "ref": 5, "id": "tt", "value": 'say "hi"', "focused": True, "children": []},
        {"tag": "DIV", "ref": 6, "children": []},  # a plain container: not shown
        {"tag": "BUTTON", "ref": 7, "id": "subbtn", "text": "Submit", "children": []}]}]}
    text, refs = render_dom(dom)
    assert text.splitlines() == ['[3] label', '  [4] input_checkbox checked', '  "apple"',
                                 '[5] input_text#tt value="say \\"hi\\"" (focused)', '[7] button#subbtn "Submit"']
    assert refs == {3, 4, 5, 7}
    page = parse_page("Task: Select apple and click Submit.\n\nPage:\n" + text)
    box = page.first("input_checkbox")
    assert box is not None and box.checked is True and box.label == "apple"
    assert page.first(tag="input_text").value == 'say "hi"'
    # the box is ticked already, so the expert's next step is Submit
    assert RULES["click-checkboxes"](page.utterance, page, 1)[1] == "click(7)"


def test_miniwob_raw_reward_maps_to_reward_and_success():
    assert score(1) == (1.0, True)
    assert score(-1) == (0.0, False)
    assert score(0) == (0.0, False)
    assert score(0.4) == (0.4, True)
    assert score("garbage") == (0.0, False) and score(7) == (1.0, True)


def test_tasks_are_curated_seeded_and_disjoint():
    d = definition()
    train, test = d.tasks("train"), d.tasks("test")
    assert len(train) == N_TRAIN_PER_TASK * len(CURATED) and len(test) == N_TEST_PER_TASK * len(CURATED)
    assert set(RULES) == set(CURATED)  # every curated task has an expert rule
    for name in CURATED:
        tr = {d.payload(t).seed for t in train if d.payload(t).task == name}
        te = {d.payload(t).seed for t in test if d.payload(t).task == name}
        assert len(tr) == N_TRAIN_PER_TASK and len(te) == N_TEST_PER_TASK and not tr & te
    # round-robin: the first test tasks (the conformance test's sample) are of different kinds
    assert len({d.payload(t).task for t in test[: d.test_sample]}) == d.test_sample
    assert [t.model_dump() for t in type(d)().tasks("test")] == [t.model_dump() for t in test]


def test_a_task_outside_the_curated_list_is_refused_by_name():
    d = definition()
    task = d.tasks("test")[0].model_copy(update={"payload": {"task": "draw-circle", "seed": 1}})
    with pytest.raises(PayloadError, match="draw-circle"):
        d.payload(task)
