"""Faults of a remote environment end one episode cleanly, with an error, while the run's other episodes finish.

The server is ours (``env-serve``'s app over the toy lookup family) behind a fault-injecting ASGI layer: a test
double only for the fault, keyed by the task's data index, so exactly one episode of the run meets it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from agenttuning.envs.remote import RemoteDefinition
from agenttuning.serve.env_app import create_env_app
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import EpisodeLimits, rollout
from tests.envs.remote.servers import Running, running
from tests.toy_env import LookupDefinition

N_TEST = 5
VICTIM = 2  # the test task (its index in the split) that meets the fault


class Faults:
    """ASGI middleware: ``/step`` calls of the victim's instance get ``fault`` (the others pass untouched)."""

    def __init__(self, app, fault: str, victim_idx: int, *, times: int = 10**9) -> None:
        self.app, self.fault, self.victim_idx, self.left = app, fault, victim_idx, times
        self.victims: set[int] = set()  # instance ids reset to the victim's task
        self.hits = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in ("/reset", "/step"):
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        if scope["path"] == "/reset" and request["data_idx"] == self.victim_idx:
            self.victims.add(request["id"])
        if scope["path"] == "/step" and request["id"] in self.victims and self.left > 0:
            self.left -= 1
            self.hits += 1
            if await self.inject(send):
                return

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def inject(self, send) -> bool:
        """Send the fault's answer; False to pass the request on (after a delay, for "slow")."""
        if self.fault == "slow":
            await asyncio.sleep(3.0)  # past the client's 1 s deadline
            return False
        status, body = {
            "500": (500, b'{"error": "overloaded"}'),
            "bad json": (200, b'{"observation": "half a respo'),
            "huge": (200, b'{"observation": "' + b"x" * (3 << 20) + b'"}'),
            "agentgym error": (200, b'{"error": "The id 7 is not valid."}'),
        }[self.fault]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return True


def _run(tmp_path, app, url_of, **client):
    definition = client.pop("definition")
    with running(app) as server:
        remote = RemoteDefinition(url_of(server), timeout=1.0, max_retries=2, max_response_bytes=1 << 20, **client)
        tasks = remote.tasks("test")
        start = time.monotonic()
        summary = rollout(remote, tasks, ExpertPolicy(remote), tmp_path / "out.jsonl", concurrency=3,
                          limits=EpisodeLimits(timeout_s=30))
        took = time.monotonic() - start
        stats = dict(remote.http.stats)
    by_id = {t.task.id: t for t in summary.trajectories}
    victim = by_id.pop(definition.tasks("test")[VICTIM].id)
    assert summary.finished == N_TEST  # every episode was recorded, the failed one too
    assert all(t.success and t.end_reason == "done" for t in by_id.values()), [t.error for t in by_id.values()]
    return victim, stats, took


def _served(fault: str, **kw):
    definition = LookupDefinition(n_train=2, n_test=N_TEST)
    app = Faults(create_env_app(definition), fault, victim_idx=2 + VICTIM, **kw)  # train tasks come first
    return definition, app


def test_a_step_that_answers_bad_json_ends_that_episode_and_is_not_sent_twice(tmp_path):
    definition, app = _served("bad json")
    victim, stats, _ = _run(tmp_path, app, lambda s: s.url, definition=definition)
    assert victim.end_reason == "env_error" and not victim.success
    assert "/step: the body is not JSON" in victim.error and "not retried; 1 attempt)" in victim.error
    assert app.hits == 1  # a step may have been applied: never repeated


def test_a_slow_step_past_the_deadline_ends_that_episode(tmp_path):
    definition, app = _served("slow")
    victim, _, took = _run(tmp_path, app, lambda s: s.url, definition=definition)
    assert victim.end_reason == "env_error"
    assert "/step: timed out after 1s (not retried; 1 attempt)" in victim.error
    assert app.hits == 1 and took < 10


def test_500s_are_retried_and_the_episode_then_succeeds(tmp_path):
    definition, app = _served("500", times=2)
    with running(app) as server:
        remote = RemoteDefinition(server.url, timeout=1.0, max_retries=2)
        summary = rollout(remote, remote.tasks("test"), ExpertPolicy(remote), tmp_path / "out.jsonl", concurrency=3)
        stats = dict(remote.http.stats)
    assert summary.successes == N_TEST and app.hits == 2
    assert stats["retries"] == 2 and stats["failures"] == 0


def test_500s_past_the_retries_end_that_episode(tmp_path):
    definition, app = _served("500")
    victim, stats, _ = _run(tmp_path, app, lambda s: s.url, definition=definition)
    assert victim.end_reason == "env_error"
    assert "HTTP 500: overloaded (retries exhausted; 3 attempts)" in victim.error
    assert app.hits == 3


def test_a_response_over_the_size_limit_ends_that_episode(tmp_path):
    definition, app = _served("huge")
    victim, _, _ = _run(tmp_path, app, lambda s: s.url, definition=definition)
    assert victim.end_reason == "env_error"
    assert f"the response is over {1 << 20:,} bytes" in victim.error


def test_an_agentgym_style_error_answer_ends_that_episode_with_its_message(tmp_path):
    definition, app = _served("agentgym error")
    victim, _, _ = _run(tmp_path, app, lambda s: s.url, definition=definition)
    assert victim.end_reason == "env_error"
    assert "the server reported an error: The id 7 is not valid." in victim.error


def test_a_server_gone_mid_episode_ends_the_running_episode_and_the_run_goes_on(tmp_path):
    # the victim's steps take 1.5 s; the others finish first, then the server goes away under the victim's step
    slow = LookupDefinition(n_train=2, n_test=N_TEST).tasks("test")[VICTIM].id
    definition = LookupDefinition(n_train=2, n_test=N_TEST, extra={slow: {"slow_s": 1.5}})
    server = Running(create_env_app(definition), graceful_s=0.1)
    remote = RemoteDefinition(server.url, timeout=5.0, max_retries=1)
    tasks = remote.tasks("test")

    def kill_when_the_others_are_done():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_lines(tmp_path / "out.jsonl")) < N_TEST - 1:
            time.sleep(0.05)
        server.stop()

    killer = threading.Thread(target=kill_when_the_others_are_done)
    killer.start()
    try:
        summary = rollout(remote, tasks, ExpertPolicy(remote), tmp_path / "out.jsonl", concurrency=3,
                          limits=EpisodeLimits(timeout_s=30))
    finally:
        killer.join()
        server.stop()
    by_id = {t.task.id: t for t in summary.trajectories}
    victim = by_id.pop(slow)
    assert summary.finished == N_TEST and all(t.success for t in by_id.values())
    assert victim.end_reason == "env_error" and not victim.success
    assert "/step" in victim.error or "/expert" in victim.error  # whichever call was in flight when it went
    # and a run started now fails every episode cleanly, without crashing
    again = rollout(remote, tasks[:2], ExpertPolicy(remote), tmp_path / "again.jsonl", concurrency=2)
    assert again.finished == 2 and {t.end_reason for t in again.trajectories} == {"env_error"}
    assert all("cannot connect" in t.error for t in again.trajectories)


def _lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
