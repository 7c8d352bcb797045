"""The selection rule every family shares: caps per template, no question text in both splits, hash order."""

from __future__ import annotations

from dataclasses import dataclass

from agenttuning.envs.derivation import split_of, stable_int, tasks_from_candidates


@dataclass(frozen=True)
class Q:
    template: str
    question: str


def test_caps_per_template_drop_shared_text_and_skip_what_the_payload_refuses():
    train = [Q("a", f"Question {i}?") for i in range(10)] + [Q("b", "Shared?"), Q("b", "only train"),
                                                             Q("b", "ONLY   train")]  # the same text normalised
    test = [Q("a", "shared?"), Q("a", "Test one?"), Q("b", "Test two?")]
    asked: list[Q] = []

    def payload(c: Q) -> dict | None:  # refuses the first question of template a it is asked about
        asked.append(c)
        return None if [q for q in asked if q.template == "a"] == [c] else {"q": c.question}

    out = tasks_from_candidates({"train": train, "test": test}, family="toy", env_id="toy-v1",
                                cap={"train": 4, "test": 5}, payload=payload)
    kept = {split: [t.instruction for t in tasks] for split, tasks in out.items()}
    assert "Shared?" not in kept["train"] and "shared?" not in kept["test"]  # in both splits: dropped from both
    refused = next(q for q in asked if q.template == "a").question
    assert sum(q.startswith("Question") for q in kept["train"]) == 4 and refused not in kept["train"]  # the cap
    assert [q for q in kept["train"] if "only" in q.lower()] in (["only train"], ["ONLY   train"])  # one of the two
    assert sorted(kept["test"]) == ["Test one?", "Test two?"]
    # asked only for candidates that could be kept: 4 kept + 1 refused of template a, one of b's "only train" pair
    assert len([c for c in asked if c in train]) == 6
    assert [t.id for t in out["test"]] == ["toy-test-00000", "toy-test-00001"]
    assert all(t.env == "toy-v1" and t.payload == {"q": t.instruction} for ts in out.values() for t in ts)
    asked.clear()
    again = tasks_from_candidates({"train": train[::-1], "test": test[::-1]}, family="toy", env_id="toy-v1",
                                  cap={"train": 4, "test": 5}, payload=payload)
    assert again == out  # the input order does not matter: selection and numbering follow the hash order


def test_split_of_is_a_stable_hash_of_the_key():
    assert stable_int("a", "b") == stable_int("a", "b") != stable_int("ab")  # the parts stay apart
    keys = [f"country:{i}" for i in range(2000)]
    share = sum(split_of("salt", k, 25) == "test" for k in keys) / len(keys)
    assert 0.22 < share < 0.28
    assert [split_of("salt", k, 25) for k in keys] == [split_of("salt", k, 25) for k in keys]
    assert [split_of("salt", k, 25) for k in keys] != [split_of("other", k, 25) for k in keys]  # salted per family
