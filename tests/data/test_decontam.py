"""Decontamination against db-v1's test split (ids, normalised instructions, 10-grams) and deduplication."""

from __future__ import annotations

import time

import pytest

from agenttuning.data.decontam import ContaminationIndex, decontaminate, task_texts, words
from agenttuning.data.example import Example, from_trajectory
from agenttuning.schema import Turn
from tests.data.builders import make_traj


def chat(cid: str, *user: str, family: str = "sharegpt") -> Example:
    turns = []
    for u in user:
        turns += [Turn(role="user", content=u), Turn(role="assistant", content="Sure.", loss=True)]
    return Example(id=cid, source="general", family=family, turns=turns)


@pytest.fixture(scope="module")
def quotable(db, db_index):
    """A db test task of at least 12 words whose own 10-grams identify it (not template boilerplate)."""
    for t in db.tasks("test"):
        if len(words(t.instruction)) >= 12 and db_index.ngram_match(t.instruction) == t.id:
            return t
    raise AssertionError("no quotable db test task")


def test_index_covers_every_registered_test_split(db):
    idx = ContaminationIndex.from_registry()
    assert {t.id for t in db.tasks("test")} <= idx.ids and idx.n_tasks >= len(db.tasks("test"))


def test_same_id_and_same_normalised_instruction(db, db_index):
    test = db.tasks("test")[3]
    by_id = make_traj(test.id, instruction="something else entirely")
    by_text = make_traj("db-train-x", instruction="  " + test.instruction.upper().replace(" ", "\n  ") + " ")
    r = decontaminate([by_id, by_text], db_index)
    assert r.kept == [] and r.dropped == {"test_id": 1, "test_instruction": 1}
    assert [(d.id, d.reason, d.match) for d in r.drops] == [(test.id, "test_id", test.id),
                                                            ("db-train-x", "test_instruction", test.id)]  # fmt: skip


def test_a_quoted_test_question_is_caught_nine_shared_words_are_not(quotable, db_index):
    ws = quotable.instruction.split()
    inside = f"Zebra quartz lantern: please help, my teacher asked '{quotable.instruction}' and I am stuck."
    ten = "zebra quartz lantern " + " ".join(words(quotable.instruction)[:10]) + " plover marmot"
    nine = "zebra quartz lantern " + " ".join(words(quotable.instruction)[:9]) + " plover marmot"
    items = [chat("g1", "hello there", inside), chat("g2", ten), chat("g3", nine), chat("g4", " ".join(ws[1:-1]))]
    r = decontaminate(items, db_index)
    assert [d.id for d in r.drops if d.reason == "test_ngram"] == ["g1", "g2", "g4"]  # g4: a 10-word inner slice
    assert all(d.match == quotable.id for d in r.drops)
    assert "g3" in [e.id for e in r.kept]


def test_agent_examples_are_checked_on_their_task_turn(quotable, db_index, db_trajectories):
    ex = from_trajectory(db_trajectories[0])
    assert task_texts(ex) == [db_trajectories[0].initial_observation]  # the task turn, after the context
    # the same conversation with a test question as the task (plus the schema text, as db shows it)
    i = len(db_trajectories[0].context)
    turns = list(ex.turns)
    turns[i] = Turn(role="user", content=quotable.instruction + "\n\nThe database has these tables: ...")
    contaminated = ex.model_copy(update={"id": "db-train-y", "turns": turns})
    r = decontaminate([ex, contaminated], db_index)
    assert r.kept == [ex] and [(d.reason, d.match) for d in r.drops] == [("test_ngram", quotable.id)]


def test_template_boilerplate_is_not_contamination(db, db_index):
    train = next(t for t in db.tasks("train") if t.instruction.startswith("How many people live in the most populous"))
    traj = make_traj(train.id, instruction=train.instruction)
    assert decontaminate([traj], db_index).kept == [traj]  # shares only template 10-grams with test questions
    strict = ContaminationIndex.build(db.tasks("test"), boilerplate=None)
    assert decontaminate([traj], strict).dropped == {"test_ngram": 1}


def test_real_db_train_trajectories_never_match_by_id_or_text(db_trajectories, db_index):
    r = decontaminate(db_trajectories, db_index)
    assert not (r.dropped.keys() & {"test_id", "test_instruction", "duplicate_id", "duplicate_text"})
    assert len(r.kept) + r.dropped["test_ngram"] == 20


def test_duplicates_keep_the_first():
    a = make_traj("db-train-1", instruction="Count the rivers.")
    a_again = make_traj("db-train-1", instruction="Count the rivers.", n_steps=3)  # a second rollout of a task
    b = make_traj("db-train-2", instruction="Count the lakes.")
    b_copy = make_traj("db-train-9", instruction="COUNT  the lakes.")  # same conversation up to case/whitespace
    b_os = make_traj("os-train-9", env="os-v1", instruction="Count the lakes.")  # another family: not a duplicate
    empty = ContaminationIndex.build([])
    r = decontaminate([a, a_again, b, b_copy, b_os], empty)
    assert [t.task.id for t in r.kept] == ["db-train-1", "db-train-2", "os-train-9"]
    assert r.dropped == {"duplicate_id": 1, "duplicate_text": 1}
    assert [(d.id, d.reason, d.match) for d in r.drops] == [("db-train-1", "duplicate_id", "db-train-1"),
                                                            ("db-train-9", "duplicate_text", "db-train-2")]  # fmt: skip
    assert r.to_json() == {"kept": 3, "dropped": {"duplicate_id": 1, "duplicate_text": 1}}
    assert len(decontaminate([a, a_again], empty, dedup=False).kept) == 2
    # general chat: same text under another id is a duplicate too
    assert decontaminate([chat("x", "Hi"), chat("y", " hi ")], empty).dropped == {"duplicate_text": 1}


def test_general_data_is_checked_fast(quotable, db_index):
    filler = "the of a country city population language border capital which what how many is in " * 20
    items = [chat(f"g{i}", filler, f"question {i} about rivers") for i in range(1000)]
    items.append(chat("leak", filler + quotable.instruction))
    start = time.perf_counter()
    r = decontaminate(items, db_index)
    assert r.dropped == {"test_ngram": 1} and r.drops[0].id == "leak"
    assert time.perf_counter() - start < 3.0  # about 0.3 s here
