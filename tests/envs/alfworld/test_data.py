"""The ``alfworld`` loader without the engine: the data folder's layout scanned into tasks, stable ids and splits, what
is left out and why, the payload's path guard, the unavailable reasons, and ``agenttuning tasks import alfworld``.
Every folder is built in tmp_path by :mod:`tests.envs.alfworld.layout` (nothing of ALFWorld's data is used)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from agenttuning.envs import base
from agenttuning.envs.alfworld import AlfworldDefinition, data
from agenttuning.envs.alfworld.data import AlfworldDataError, AlfworldPayload, scan
from agenttuning.envs.base import PayloadError, parse_payload
from agenttuning.jsonl import read_records
from agenttuning.schema import Task
from tests.envs.alfworld.layout import add_game, standard_folder

ENV = "alfworld-v1"


@pytest.fixture
def folder(tmp_path):
    return standard_folder(tmp_path)


def test_scan_reads_train_and_valid_unseen_into_the_two_splits(folder):
    report = scan(folder, ENV)
    train, test = report.by_split["train"], report.by_split["test"]
    assert [t.id for t in train] == [
        "alfworld-train-pick_and_place_simple-Apple-None-Fridge-1-trial_T0001",
        "alfworld-train-pick_heat_then_place_in_recep-Mug-None-DiningTable-1-trial_T0002",
    ]
    assert [t.payload["task_type"] for t in test] == [  # sorted by path; valid_seen is not the test split
        "look_at_obj_in_light", "pick_clean_then_place_in_recep", "pick_cool_then_place_in_recep"]
    cool = test[2]
    assert cool.env == ENV and cool.split == "test"
    assert cool.payload == {"game": "valid_unseen/pick_cool_then_place_in_recep-Apple-None-DiningTable-2/trial_T0003/"
                                    "game.tw-pddl",
                            "task_type": "pick_cool_then_place_in_recep", "goal": "put a cool apple in diningtable"}
    assert cool.instruction.startswith("Your task is to: put a cool apple in diningtable.")
    assert report.skipped == {} and report.tasks == train + test


def test_the_json_folder_itself_and_valid_seen_as_the_test_split(folder):
    assert scan(folder / "json_2.1.1", ENV).by_split == scan(folder, ENV).by_split
    seen = scan(folder, ENV, test_folder="valid_seen").by_split["test"]
    assert [t.payload["task_type"] for t in seen] == ["pick_two_obj_and_place"]
    assert seen[0].id == "alfworld-valid_seen-pick_two_obj_and_place-Apple-None-DiningTable-1-trial_T0006"


def test_tasks_do_not_depend_on_where_the_folder_lies(folder, tmp_path):
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "data")
    assert scan(moved, ENV).by_split == scan(folder, ENV).by_split


def test_games_that_cannot_be_played_are_left_out_with_their_reason(folder):
    base_dir = folder / "json_2.1.1"
    add_game(base_dir, "train", "pick_and_place_with_movable_recep", "Apple-Bowl-Fridge-1", "trial_M")
    add_game(base_dir, "train", "pick_and_place_simple", "AppleSliced-None-Fridge-1", "trial_S")
    add_game(base_dir, "train", "pick_and_place_simple", "Apple-None-Fridge-9", "trial_U", solvable=False)
    no_game = add_game(base_dir, "train", "pick_and_place_simple", "Apple-None-Fridge-8", "trial_N")
    (no_game / "game.tw-pddl").unlink()
    bad_type = add_game(base_dir, "train", "pick_and_place_simple", "Apple-None-Fridge-7", "trial_T")
    (bad_type / "traj_data.json").write_text(json.dumps({"task_type": "fly_to_the_moon"}))
    no_goal = add_game(base_dir, "train", "pick_and_place_simple", "Apple-None-Fridge-6", "trial_G")
    game = json.loads((no_goal / "game.tw-pddl").read_text())
    game["grammar"] = game["grammar"].replace("put some apple in fridge", "UNKNOWN GOAL")
    (no_goal / "game.tw-pddl").write_text(json.dumps(game))
    broken = add_game(base_dir, "valid_unseen", "pick_and_place_simple", "Apple-None-Fridge-5", "trial_J")
    (broken / "game.tw-pddl").write_text("{not json")

    report = scan(folder, ENV)
    reasons = {k.rsplit("/", 1)[-1]: v.split(":", 1)[0] for k, v in report.skipped.items()}
    assert reasons == {"trial_M": "movable or sliced", "trial_S": "movable or sliced", "trial_U": "unsolvable",
                       "trial_N": "no game", "trial_T": "task type", "trial_G": "no goal", "trial_J": "bad file"}
    assert "game.tw-pddl: not JSON" in report.skipped["valid_unseen/pick_and_place_simple-Apple-None-Fridge-5/trial_J"]
    assert [len(report.by_split[s]) for s in ("train", "test")] == [2, 3]  # the good games are all still there
    assert "left out: 1 bad file; 2 movable or sliced; 1 no game; 1 no goal; 1 task type; 1 unsolvable" \
        in report.summary()


def test_a_folder_that_is_not_the_layout_is_an_error_naming_it(tmp_path, folder):
    with pytest.raises(AlfworldDataError, match="no such folder"):
        scan(tmp_path / "missing", ENV)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlfworldDataError, match=r"empty: not ALFWorld's data layout: expected json_2.1.1/"):
        scan(tmp_path / "empty", ENV)
    shutil.rmtree(folder / "json_2.1.1" / "valid_unseen")
    with pytest.raises(AlfworldDataError, match="no valid_unseen folder"):
        scan(folder, ENV)
    assert scan(folder, ENV, test_folder="valid_seen").by_split["test"]  # the other test folder is still there


@pytest.mark.parametrize("game", [
    "../train/a/b/game.tw-pddl", "/etc/passwd", "train/a/../../../game.tw-pddl", "train/a/game.tw-pddl",
    "train\\a\\b\\game.tw-pddl", "elsewhere/a/b/game.tw-pddl", "train/a/b/other.json", "train/./b/game.tw-pddl",
])
def test_the_payload_keeps_the_game_inside_the_data_folder(game):
    task = Task(id="t", env=ENV, split="test", instruction="x",
                payload={"game": game, "task_type": "pick_and_place_simple", "goal": "put some apple in fridge"})
    with pytest.raises(PayloadError, match="task t .*game"):
        parse_payload(AlfworldPayload, task)


def test_without_a_data_folder_the_family_lists_nothing_and_says_what_to_set(monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    d = AlfworldDefinition()
    assert d.tasks("train") == [] and d.tasks("test") == []
    assert "no ALFWorld data folder is set: set $AGENTTUNING_ALFWORLD_DATA" in d.unavailable_reason()
    registered = base.get("alfworld")  # registered through the entry points, listed with the others
    assert registered.id == ENV and registered in base.available()


def test_the_environment_variable_names_the_folder(monkeypatch, folder, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(folder))
    d = AlfworldDefinition()
    assert [t.id for t in d.tasks("test")] == [t.id for t in scan(folder, ENV).by_split["test"]]
    reason = d.unavailable_reason()
    assert reason is None or "data folder" not in reason  # only the engine's packages can be missing
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    wrong = AlfworldDefinition()
    assert f"$AGENTTUNING_ALFWORLD_DATA: {tmp_path / 'nowhere'}: no such folder" in wrong.unavailable_reason()
    with pytest.raises(AlfworldDataError, match="nowhere: no such folder"):  # a wrong path is never "no tasks"
        wrong.tasks("test")
    assert AlfworldDefinition(data_path=folder).tasks("train")  # an argument overrides the variable


@pytest.mark.parametrize(("module", "said"), [
    ("fast_downward", "fast_downward (the package fast-downward-textworld"),
    ("alfworld.agents.environment.alfred_tw_env", "the alfworld package is not installed"),
    ("textworld", "textworld is not installed"),
])
def test_a_missing_engine_package_is_named(monkeypatch, folder, module, said):
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError, as if not installed
    reason = AlfworldDefinition(data_path=folder).unavailable_reason()
    assert reason is not None and said in reason and "data folder" not in reason


def test_tasks_import_alfworld_writes_the_task_records(folder, tmp_path):
    from agenttuning.cli import app

    out = tmp_path / "alfworld.jsonl"
    r = CliRunner().invoke(app, ["tasks", "import", "alfworld", str(folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "train 2, test 3 tasks" in r.output
    tasks = read_records(out, Task)
    assert tasks == scan(folder, ENV).tasks
    empty = tmp_path / "nothing"
    (empty / "json_2.1.1" / "train").mkdir(parents=True)
    (empty / "json_2.1.1" / "valid_unseen").mkdir()
    r = CliRunner().invoke(app, ["tasks", "import", "alfworld", str(empty), "--out", str(tmp_path / "none.jsonl")])
    assert r.exit_code != 0 and "no task could be imported" in " ".join(r.output.split())  # rich wraps lines
    r = CliRunner().invoke(app, ["tasks", "import", "alfworld", str(tmp_path / "x"), "--out", str(out)])
    assert r.exit_code != 0 and "x: no such folder (the ALFWorld data folder" in " ".join(r.output.split())
