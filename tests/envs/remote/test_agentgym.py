"""Our client drives servers that are not ours: small servers written here that answer exactly as AgentGym's
``agentenv-textcraft``, ``agentenv-babyai`` and ``agentenv-webshop`` servers do (their routes, request bodies,
response shapes, and errors sent as status 200 ``{"error": ...}``), with a tiny game behind each."""

from __future__ import annotations

from typing import Optional

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from agenttuning.envs.base import get
from agenttuning.envs.remote import RemoteDefinition
from agenttuning.rollout.engine import rollout
from tests.envs.remote.servers import running
from tests.toy_env import Scripted


class StepBody(BaseModel):
    id: int
    action: str


class ResetBody(BaseModel):
    id: int
    data_idx: Optional[int] = 0  # noqa: UP045 - as their model declares it


class IdBody(BaseModel):
    id: int


class CreateBody(BaseModel):
    commands: Optional[str] = None  # noqa: UP045
    goal: Optional[str] = None  # noqa: UP045


def textcraft_like() -> tuple[FastAPI, dict]:
    """TextCraft's shapes: create answers the instance *with* an observation; step's reward is per step."""
    app, seen = FastAPI(), {"actions": [], "closed": [], "resets": []}
    games: dict[int, dict] = {}

    @app.post("/create")
    def create(body: CreateBody):
        iid = len(games)
        games[iid] = {"planks": 0, "goal": "stick"}
        return {"id": iid, "observation": "Crafting commands: ...", "done": False, "reward": 0}

    @app.post("/reset")
    def reset(body: ResetBody):
        if body.id not in games:
            return {"error": f"The id {body.id} is not valid."}
        seen["resets"].append(body.data_idx)
        games[body.id] = {"planks": 0, "goal": f"stick{body.data_idx}"}
        return {"id": body.id, "observation": f"Crafting commands:\ncraft 1 stick using 2 planks\nGoal: craft "
                                              f"stick (task {body.data_idx}).", "done": False, "reward": 0}

    @app.post("/step")
    def step(body: StepBody):
        if body.id not in games:
            return {"error": f"The id {body.id} is not valid."}
        seen["actions"].append(body.action)
        game = games[body.id]
        if body.action == "get 2 planks":
            game["planks"] += 2
            return {"observation": "Got 2 planks", "reward": 0, "done": False}
        if body.action == "craft 1 stick using 2 planks" and game["planks"] >= 2:
            return {"observation": "Crafted 1 minecraft:stick", "reward": 1, "done": True}
        return {"observation": "Could not execute " + body.action, "reward": 0, "done": False}

    @app.get("/observation")
    def observation(id: int):  # noqa: A002
        return "..."

    @app.post("/close")
    def close(body: IdBody):
        seen["closed"].append(body.id)
        return games.pop(body.id, None) is not None

    return app, seen


def babyai_like() -> tuple[FastAPI, dict]:
    """BabyAI's shapes: create answers only the id; ``reward`` is the running progress, ``score`` its sum."""
    app, seen = FastAPI(), {"closed": []}
    games: dict[int, dict] = {}

    @app.post("/create")
    async def create():
        games[len(games)] = {}
        return {"id": len(games) - 1}

    @app.post("/reset")
    def reset(body: ResetBody):
        games[body.id] = {"reward": 0.0, "score": 0.0, "done": False}
        return {"observation": f"Your goal: go to the red ball\nYou see a wall 3 steps forward.\nAvailable actions: "
                               f"[\"turn left\", \"move forward\"]", "reward": 0, "score": 0, "deleted": False,
                "done": False}

    @app.post("/step")
    def step(body: StepBody):
        game = games[body.id]
        if game["done"]:
            return {"error": f"The task with environment {body.id} has finished."}
        if body.action in ("move forward", "go to red ball 1"):
            game["reward"] = 0.5 if body.action == "move forward" else 1.0
            game["done"] = game["reward"] == 1.0
        game["score"] += game["reward"]
        return {"observation": "You moved.", "reward": game["reward"], "score": game["score"], "done": game["done"]}

    @app.post("/close")
    def close(body: IdBody):
        seen["closed"].append(body.id)
        return True

    return app, seen


class WebShopStep(BaseModel):
    env_idx: int
    action: str


class WebShopReset(BaseModel):
    env_idx: int
    session_id: Optional[int] = None  # noqa: UP045


def webshop_like() -> tuple[FastAPI, dict]:
    """WebShop's shapes: a bare int id, ``env_idx`` keys, reset answering a pair, the observation read after it."""
    app, seen = FastAPI(), {"sessions": []}
    pages: dict[int, str] = {}

    @app.post("/create", response_model=int)
    async def create():
        pages[len(pages) + 41] = "WebShop [SEP] Instruction: [SEP] start [SEP] Search"
        return len(pages) + 40

    @app.post("/reset")
    def reset(body: WebShopReset):
        seen["sessions"].append(body.session_id)
        pages[body.env_idx] = f"WebShop [SEP] Instruction: [SEP] Find me item {body.session_id} [SEP] Search"
        return (pages[body.env_idx], None)

    @app.get("/observation", response_model=str)
    def observation(env_idx: int):
        return pages[env_idx]

    @app.post("/step")
    def step(body: WebShopStep):
        done = body.action == "click[Buy Now]"
        return {"state": "Thank you for shopping" if done else "results", "reward": 0.75 if done else 0.0,
                "done": done, "info": None}

    return app, seen


def test_a_textcraft_server_is_played_with_its_own_shapes(tmp_path):
    app, seen = textcraft_like()
    replies = ["Thought: need planks.\nAction: get 2 planks!!", "Thought: craft.\nAction: craft 1 stick using 2 planks"]
    with running(app) as server:
        remote = get(f"remote:{server.url}#textcraft?test=3-4&train=10-12")
        assert [t.payload["data_idx"] for t in remote.tasks("test")] == [3, 4] and len(remote.tasks("train")) == 3
        summary = rollout(remote, remote.tasks("test")[:1], Scripted(replies), tmp_path / "out.jsonl")
    traj = summary.trajectories[0]
    assert traj.initial_observation.endswith("Goal: craft stick (task 3).") and seen["resets"] == [3]
    assert seen["actions"] == ["get 2 planks", "craft 1 stick using 2 planks"]  # only letters, digits, commas, spaces
    assert [(s.observation, s.reward, s.terminated) for s in traj.steps] == [
        ("Got 2 planks", 0.0, False), ("Crafted 1 minecraft:stick", 1.0, True)]
    assert traj.success and traj.end_reason == "done"
    assert seen["closed"] == [0]  # the server's instance was freed


def test_a_babyai_servers_running_progress_becomes_per_step_rewards(tmp_path):
    app, seen = babyai_like()
    replies = ["Thought: a.\nAction: turn left", "Thought: b.\nAction: move forward",
               "Thought: c.\nAction: go to red ball 1"]
    with running(app) as server:
        remote = RemoteDefinition(server.url, "babyai", test=range(40, 42))
        summary = rollout(remote, remote.tasks("test")[:1], Scripted(replies), tmp_path / "out.jsonl")
    traj = summary.trajectories[0]
    assert traj.initial_observation.startswith("Your goal: go to the red ball")
    assert [s.reward for s in traj.steps] == [0.0, 0.5, 0.5] and traj.reward == 1.0 and traj.success
    assert traj.steps[-1].terminated and len(seen["closed"]) == 1


def test_a_babyai_error_answer_raises_with_the_servers_message():
    from agenttuning.envs.remote.flavors import Episode
    from agenttuning.envs.remote.http import RemoteEnvError

    app, _ = babyai_like()
    with running(app) as server:
        remote = RemoteDefinition(server.url, "babyai")
        episode = Episode(remote.flavor.create(remote.http, None))
        remote.flavor.reset(remote.http, episode, 0, None)
        assert remote.flavor.step(remote.http, episode, "go to red ball 1", None).terminated
        # AgentGym's servers refuse a step after the end with status 200 and {"error": ...}: an error here too
        with pytest.raises(RemoteEnvError, match="the server reported an error: The task with environment 0 has"):
            remote.flavor.step(remote.http, episode, "move forward", None)


def test_a_webshop_server_with_a_bare_int_id_and_env_idx_keys(tmp_path):
    app, seen = webshop_like()
    replies = ["Thought: search.\nAction: search[red shoes]", "Thought: buy.\nAction: click[Buy Now]"]
    with running(app) as server:
        remote = get(f"remote:{server.url}#webshop?test=7")
        summary = rollout(remote, remote.tasks("test"), Scripted(replies), tmp_path / "out.jsonl")
    traj = summary.trajectories[0]
    assert seen["sessions"] == [7] and "Find me item 7" in traj.initial_observation
    assert [(s.action, s.observation, s.reward) for s in traj.steps] == [
        ("search[red shoes]", "results", 0.0), ("click[Buy Now]", "Thank you for shopping", 0.75)]
    assert traj.end_reason == "done" and traj.reward == 0.75 and not traj.success  # WebShop scores below 1


def test_agentgym_flavors_have_no_expert_and_say_so():
    remote = RemoteDefinition("http://127.0.0.1:9", "sciworld")
    with pytest.raises(NotImplementedError, match="runs only on an agenttuning env-serve server"):
        remote.expert(remote.tasks("test")[0], [])


def test_an_overlong_action_gets_the_invalid_action_feedback_and_is_not_sent(tmp_path):
    app, seen = textcraft_like()
    with running(app) as server:
        remote = RemoteDefinition(server.url, "textcraft", test=[0])
        env = remote.make()
        env.reset(remote.tasks("test")[0])
        result = env.step("get " + "x" * 5000)
        env.close()
    assert result.invalid and result.reward == 0 and not result.terminated
    assert result.observation.startswith("Invalid action: the action is 5,004 characters long, over the limit of 4,096")
    assert seen["actions"] == []
