"""``env-serve``'s own promises: limits and error answers, instances on their own threads and reaped when idle,
interrupt and the environment's exceptions across the wire, ``remote:`` names and the command line."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from agenttuning.cli import app as cli
from agenttuning.envs.base import get
from agenttuning.envs.remote import RemoteDefinition, RemoteEnvError, parse_spec
from agenttuning.envs.remote.definition import parse_indices
from agenttuning.envs.remote.http import Interrupted
from agenttuning.serve.env_app import create_env_app
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from tests.envs.remote.servers import running
from tests.toy_env import LookupDefinition, LookupEnv

THREADS: list[tuple[str, str]] = []


class Traced(LookupEnv):
    """The toy environment, noting on which thread each call runs."""

    def start(self, task, payload):
        THREADS.append(("start", threading.current_thread().name))
        return super().start(task, payload)

    def release(self):
        THREADS.append(("release", threading.current_thread().name))


class TracedDefinition(LookupDefinition):
    env_class = Traced


def test_error_answers_name_what_was_wrong():
    with running(create_env_app(LookupDefinition(n_train=2, n_test=3), max_body_bytes=1 << 16)) as server:
        c = httpx.Client(base_url=server.url)
        iid = c.post("/create").json()["id"]
        unknown = c.post("/step", json={"id": 99, "action": "x"})
        assert unknown.status_code == 404 and "no environment instance 99" in unknown.json()["error"]
        out = c.post("/reset", json={"id": iid, "data_idx": 5})
        assert out.status_code == 400 and "data_idx 5 is out of range" in out.json()["error"]
        assert "train 0-1, test 2-4" in out.json()["error"]
        malformed = c.post("/reset", json={"id": iid})
        assert malformed.status_code == 400 and "data_idx: Field required" in malformed.json()["error"]
        big = c.post("/step", json={"id": iid, "action": "x" * (1 << 17)})
        assert big.status_code == 413 and "over this server's limit" in big.json()["error"]
        assert c.get("/nope").status_code == 404
        first = c.post("/reset", json={"id": iid, "data_idx": 2}).json()
        assert first["task_id"] == "lookup-test-0000" and c.get("/observation", params={"id": iid}).json() == (
            first["observation"])
        step = c.post("/step", json={"id": iid, "action": "lookup test0"}).json()
        assert c.get("/observation", params={"id": iid}).json() == step["observation"] and step["done"] is False
        assert c.post("/close", json={"id": iid}).json() is True and c.post("/close", json={"id": iid}).json() is False


def test_instances_are_bounded_and_a_full_server_answers_503_until_one_is_closed():
    definition = LookupDefinition(n_train=2, n_test=3)
    with running(create_env_app(definition, max_instances=2)) as server:
        remote = RemoteDefinition(server.url, max_retries=0)
        task = remote.tasks("test")[0]
        a, b, c = remote.make(), remote.make(), remote.make()
        a.reset(task), b.reset(task)
        with pytest.raises(RemoteEnvError, match=r"/create: HTTP 503: all 2 instances are in use"):
            c.reset(task)
        a.close()  # frees its server instance
        assert c.reset(task).startswith("Find the word for test0.")
        b.close(), c.close()
        assert httpx.get(server.url + "/stats").json()["instances"] == 0


def test_instances_run_on_their_own_thread_and_idle_ones_are_reaped_there():
    THREADS.clear()
    with running(create_env_app(TracedDefinition(n_train=2, n_test=3), idle_s=0.3, reap_every_s=0.05)) as server:
        c = httpx.Client(base_url=server.url)
        iid = c.post("/create").json()["id"]
        c.post("/reset", json={"id": iid, "data_idx": 2})
        time.sleep(0.8)  # left idle past idle_s: the reaper closes it
        stats = c.get("/stats").json()
        gone = c.post("/step", json={"id": iid, "action": "lookup x"})
    assert stats["reaped"] == 1 and stats["instances"] == 0
    assert gone.status_code == 404 and "reaped" in gone.json()["error"]
    names = {name for _, name in THREADS}
    assert len(names) == 1 and names.pop().startswith(f"env-{iid}")  # make, reset and close on the same thread
    assert [what for what, _ in THREADS][-1] == "release"


def test_an_environment_that_raises_ends_the_episode_without_a_retry(tmp_path):
    broken = LookupDefinition(n_train=2, n_test=3).tasks("test")[1].id
    definition = LookupDefinition(n_train=2, n_test=3, extra={broken: {"raise": True}})
    with running(create_env_app(definition)) as server:
        remote = RemoteDefinition(server.url, max_retries=3)
        summary = rollout(remote, remote.tasks("test"), ExpertPolicy(remote), tmp_path / "out.jsonl")
        stats = remote.http.stats
    by_id = {t.task.id: t for t in summary.trajectories}
    assert by_id[broken].end_reason == "env_error"
    assert "the environment raised RuntimeError: the environment broke (not retried; 1 attempt)" in by_id[broken].error
    assert summary.successes == 2 and stats["retries"] == 0


def test_interrupt_makes_a_waiting_step_return_at_once():
    slow = LookupDefinition(n_train=2, n_test=3).tasks("test")[0].id
    with running(create_env_app(LookupDefinition(n_train=2, n_test=3, extra={slow: {"slow_s": 1.5}}))) as server:
        remote = RemoteDefinition(server.url)
        env = remote.make()
        env.reset(remote.tasks("test")[0])
        threading.Timer(0.2, env.interrupt).start()
        start = time.monotonic()
        with pytest.raises(Interrupted):
            env.step("lookup a")
        assert time.monotonic() - start < 1.0
        env.close()


def test_remote_names_resolve_through_the_registry_and_bad_ones_are_clear_errors():
    with running(create_env_app(LookupDefinition(n_train=2, n_test=3))) as server:
        spec = f"remote:{server.url}"
        assert get(spec) is get(spec) and get(spec).id == "lookup-v1"  # one definition per name: tasks listed once
        with pytest.raises(ValueError, match="an agenttuning server names its own family"):
            parse_spec(f"{spec}#agenttuning?test=1-2")
    with pytest.raises(ValueError, match="cannot use the environment server at http://127.0.0.1:9"):
        RemoteDefinition("http://127.0.0.1:9", max_retries=0)
    with pytest.raises(ValueError, match="use http://HOST:PORT"):
        parse_spec("remote:ftp://x")
    with pytest.raises(ValueError, match="unknown remote environment flavor 'nethack'"):
        parse_spec("remote:http://127.0.0.1:9#nethack")
    with pytest.raises(ValueError, match="unknown option 'split'"):
        parse_spec("remote:http://127.0.0.1:9#babyai?split=1")
    with pytest.raises(ValueError, match="data indices in both splits: \\[3\\]"):
        parse_spec("remote:http://127.0.0.1:9#babyai?test=0-3&train=3-5")
    with pytest.raises(ValueError, match="option test='5-2'"):
        parse_spec("remote:http://127.0.0.1:9#babyai?test=5-2")
    assert parse_indices("0-2, 7,9-10") == [0, 1, 2, 7, 9, 10] and parse_indices("") == []
    d = parse_spec("remote:http://127.0.0.1:9#alfworld?test=0-1&max_turns=12&name=alf&timeout=3&retries=0")
    assert (d.id, d.max_turns, d.http.timeout, d.http.max_retries) == ("alf-v1", 12, 3.0, 0)


def test_the_command_line_rolls_out_and_checks_a_remote_environment(tmp_path):
    runner = CliRunner()
    help_ = runner.invoke(cli, ["env-serve", "--help"])
    assert help_.exit_code == 0 and "AgentGym" in help_.output
    refused = runner.invoke(cli, ["env-serve", "remote:http://127.0.0.1:9"])
    assert refused.exit_code == 2 and "not a remote: name" in refused.output
    with running(create_env_app(LookupDefinition(n_train=2, n_test=3))) as server:
        out = tmp_path / "out.jsonl"
        done = runner.invoke(cli, ["rollout", "--env", f"remote:{server.url}", "--policy", "expert", "--split", "test",
                                   "--out", str(out), "--no-progress"])
        checked = runner.invoke(cli, ["check", "--env", f"remote:{server.url}", "--max-tasks", "2"])
    assert done.exit_code == 0, done.output
    assert len(out.read_text().splitlines()) == 3 and '"success":true' in out.read_text().replace(" ", "")
    assert checked.exit_code == 0, checked.output
    gone = runner.invoke(cli, ["rollout", "--env", "remote:http://127.0.0.1:9", "--policy", "expert",
                               "--out", str(tmp_path / "x.jsonl")])  # no server there: one clear line, exit 2
    assert gone.exit_code == 2 and "cannot use the environment server" in gone.output
