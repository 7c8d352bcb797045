"""The household environment on real TextWorld games: tasks listed without generating, games generated
byte-identically from their seed, and the conformance check (expert wins every test game, a wrong answer scores 0,
adversarial actions bounded) on a small variant of the family: 4 test games, one per level."""

from __future__ import annotations

import hashlib
import threading

import pytest

from agenttuning.envs.household.definition import HouseholdDefinition, thought_for
from agenttuning.envs.admissible import normalise_command
from agenttuning.envs.household.env import clean_feedback
from agenttuning.envs.household.games import LEVELS, ensure_game, unavailable_reason

needs_textworld = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The family with 4 test games (the registered family's first four), cached in a temporary folder."""
    return HouseholdDefinition(n_train=8, n_test=len(LEVELS), cache_dir=tmp_path_factory.mktemp("household"))


def test_the_full_task_lists_are_derived_without_generating_and_never_share_a_seed(tmp_path):
    d = HouseholdDefinition(cache_dir=tmp_path)
    train, test = d.tasks("train"), d.tasks("test")
    assert (len(train), len(test)) == (300, 100)
    seeds = {s: {d.payload(t).seed for t in ts} for s, ts in (("train", train), ("test", test))}
    assert len(seeds["train"]) == 300 and len(seeds["test"]) == 100 and not seeds["train"] & seeds["test"]
    assert {d.payload(t).food_split for t in train} == {"train"} and {d.payload(t).food_split for t in test} == {"test"}
    assert {d.payload(t).level.name for t in test} == {lv.name for lv in LEVELS}
    assert list(tmp_path.iterdir()) == []  # nothing generated
    small = HouseholdDefinition(n_test=3, cache_dir=tmp_path)
    assert small.tasks("test") == test[:3]  # a smaller family plays the registered family's first games


def test_feedback_loses_the_banner_and_prompt_and_commands_are_normalised():
    raw = "\n\n   ____ \n  | $$$$ \\\n\nYou are hungry!\n\n\n\n-= Kitchen =-\nA fridge.\n\n>      -= Kitchen =-0/3"
    assert clean_feedback(raw) == "You are hungry!\n\n-= Kitchen =-\nA fridge."
    assert normalise_command("  Take   Knife from TABLE.\nThought: more") == "take knife from table"
    assert thought_for("dice white onion with knife") == "The recipe says to dice the white onion; I do it with the knife."


@needs_textworld
def test_a_game_is_generated_byte_identically_from_its_seed_in_two_caches(small, tmp_path):
    payload = small.payload(small.tasks("test")[0])

    def digest(root):
        game = ensure_game(payload, root)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(game.parent.iterdir())}

    first, second = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert set(first) == {"game.z8", "game.json", "game.ni"}
    assert first == second


@needs_textworld
def test_concurrent_first_uses_generate_a_game_once(small, tmp_path):
    payload = small.payload(small.tasks("train")[0])
    paths, errors = [], []

    def use():
        try:
            paths.append(ensure_game(payload, tmp_path))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and paths[0].is_file()
    # one game folder and its lock; no temporary folder left behind by a second generation
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([payload.key, f"{payload.key}.lock"])


@needs_textworld
def test_check_env_passes_on_the_small_family(small):
    from agenttuning.rollout.conformance import check_env

    report = check_env(small, concurrency=2)
    assert report.passed, [(r.name, r.detail) for r in report.failures()]


@needs_textworld
def test_unavailable_commands_are_feedback_and_give_up_ends_the_game_lost(small):
    task = small.tasks("test")[0]
    env = small.make()
    try:
        first = env.reset(task)
        assert "AVAILABLE COMMANDS:" in first and "$$" not in first
        r = env.step("eat meal")  # not available before the meal is prepared
        assert r.invalid and not r.terminated and r.reward == 0
        r = env.step("look")
        assert not r.invalid and "AVAILABLE COMMANDS:" in r.observation and r.info["max_score"] >= 1
        r = env.step("give up")
        assert r.terminated and r.reward == 0 and r.success is False
    finally:
        env.close()
