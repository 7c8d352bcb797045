"""OpenAIPolicy against a real HTTP server on 127.0.0.1 (tests/openai_server.py): replies, usage, what is sent,
retries on every transient fault, immediate failure on final ones, Retry-After, env vars, concurrency."""

from __future__ import annotations

import asyncio
import email.utils
import gc
import time

import pytest

from agenttuning.policies.base import PolicyError
from agenttuning.policies.openai import OpenAIPolicy, _retry_after_seconds, backoff_delay
from agenttuning.schema import Task, Turn, Usage
from tests.openai_server import FakeOpenAIServer

TASK = Task(id="t-0001", env="fake-v1", split="test", instruction="say hi")
MESSAGES = [
    Turn(role="user", content="You are an agent. Follow the format."),
    Turn(role="assistant", content="Ok.", loss=False),
    Turn(role="user", content="Task: say hi"),
]
MAX_RETRIES = 3


# generous enough that a loaded 2-core CI machine answers a normal request in time
TIMEOUT = 1.0


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
async def new_policy(server):
    made: list[OpenAIPolicy] = []

    def make(**kwargs) -> OpenAIPolicy:
        defaults = dict(
            base_url=server.base_url,
            api_key="sk-test",
            timeout=TIMEOUT,
            max_retries=MAX_RETRIES,
            backoff_base=0.01,
            backoff_max=0.05,
        )
        policy = OpenAIPolicy(kwargs.pop("model", "fake-model"), **{**defaults, **kwargs})
        made.append(policy)
        return policy

    yield make
    for policy in made:
        await policy.aclose()


# -- the happy path -------------------------------------------------------------------------------------------------


async def test_reply_text_and_usage(server, new_policy):
    policy = new_policy()
    reply = await policy.act(MESSAGES, task=TASK)
    assert policy.name == "openai:fake-model"
    assert reply.text == "echo: Task: say hi"
    # the fake counts whitespace words: 7 + 1 + 3 prompt, 4 completion
    assert reply.usage == Usage(prompt_tokens=11, completion_tokens=4, requests=1)
    assert policy.stats == {
        "calls": 1, "requests": 1, "retries": 0, "failures": 0, "prompt_tokens": 11, "completion_tokens": 4,
    }  # fmt: skip
    assert server.request_count == 1


async def test_request_carries_model_messages_and_sampling_settings(server, new_policy):
    policy = new_policy(model="my-model", temperature=0.7, max_tokens=77, stop=["\nObservation:"], seed=3)
    await policy.act(MESSAGES, task=TASK)
    (req,) = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "my-model"
    assert req.body["messages"] == [
        {"role": "user", "content": "You are an agent. Follow the format."},
        {"role": "assistant", "content": "Ok."},
        {"role": "user", "content": "Task: say hi"},
    ]
    assert req.body["temperature"] == 0.7
    assert req.body["max_tokens"] == 77
    assert req.body["stop"] == ["\nObservation:"]
    assert req.body["seed"] == 3
    assert req.headers["authorization"] == "Bearer sk-test"


async def test_unset_stop_and_seed_are_not_sent(server, new_policy):
    await new_policy().act(MESSAGES, task=TASK)
    body = server.requests[0].body
    assert body["temperature"] == 0.0 and body["max_tokens"] == 512
    assert "stop" not in body and "seed" not in body


async def test_responder_drives_the_reply(new_policy, server):
    server.responder = lambda messages: f"Thought: {len(messages)} turns\nAction: finish"
    reply = await new_policy().act(MESSAGES, task=TASK)
    assert reply.text == "Thought: 3 turns\nAction: finish"


async def test_missing_usage_counts_as_zero_tokens(server, new_policy):
    server.inject("no_usage")
    reply = await new_policy().act(MESSAGES, task=TASK)
    assert reply.text == "echo: Task: say hi"
    assert reply.usage == Usage(prompt_tokens=0, completion_tokens=0, requests=1)
    assert server.request_count == 1


# -- transient faults are retried ----------------------------------------------------------------------------------

TRANSIENT = [
    ("429", {}),
    ("500", {}),
    ("503", {}),
    ("slow", {"delay": 2.5}),  # longer than the timeout
    ("malformed", {}),  # 200, application/json, body is not JSON
    ("malformed", {"content_type": "text/plain"}),
    ("no_choices", {}),
    ("empty_choices", {}),
    ("null_content", {}),
    ("drop", {}),  # connection closed without a response
]
IDS = [k + ("-" + "-".join(map(str, o.values())) if o else "") for k, o in TRANSIENT]


@pytest.mark.parametrize(("kind", "options"), TRANSIENT, ids=IDS)
async def test_transient_fault_is_retried_then_succeeds(server, new_policy, kind, options):
    server.inject(kind, times=2, **options)
    policy = new_policy()
    reply = await policy.act(MESSAGES, task=TASK)
    assert reply.text == "echo: Task: say hi"
    assert reply.usage.requests == 1 and reply.usage.completion_tokens == 4
    assert server.request_count == 3
    assert [r.fault for r in server.requests] == [kind, kind, None]
    assert policy.stats["requests"] == 3 and policy.stats["retries"] == 2 and policy.stats["failures"] == 0


PERSISTENT = [
    ("500", "HTTP 500"),
    ("429", "HTTP 429"),
    ("slow", f"timed out after {TIMEOUT:g}s"),
    ("malformed", "invalid response: body is not JSON"),
    ("no_choices", "invalid response: no choices"),
    ("null_content", "invalid response: the first choice has no message content"),
    ("drop", "connection error"),
]


@pytest.mark.parametrize(("kind", "cause"), PERSISTENT, ids=[k for k, _ in PERSISTENT])
async def test_persistent_fault_raises_after_max_retries_plus_one(server, new_policy, kind, cause):
    server.inject(kind, times=None, delay=1.5)
    policy = new_policy()
    with pytest.raises(PolicyError) as err:
        await policy.act(MESSAGES, task=TASK)
    message = str(err.value)
    assert cause in message
    assert f"retries exhausted; {MAX_RETRIES + 1} attempts" in message
    assert "openai:fake-model" in message and TASK.id in message
    assert err.value.__cause__ is not None  # chained to what really went wrong
    assert server.request_count == MAX_RETRIES + 1
    assert policy.stats["requests"] == MAX_RETRIES + 1 and policy.stats["failures"] == 1


@pytest.mark.parametrize("status", ["400", "401", "403", "404", "422"])
async def test_final_status_fails_without_retry(server, new_policy, status):
    server.inject(status, times=None)
    policy = new_policy()
    with pytest.raises(PolicyError, match=rf"HTTP {status}: injected fault {status} \(not retryable; 1 attempt\)"):
        await policy.act(MESSAGES, task=TASK)
    assert server.request_count == 1
    assert policy.stats["retries"] == 0 and policy.stats["failures"] == 1


async def test_zero_retries_means_one_attempt(server, new_policy):
    server.inject("500", times=None)
    with pytest.raises(PolicyError, match=r"retries exhausted; 1 attempt\)"):
        await new_policy(max_retries=0).act(MESSAGES, task=TASK)
    assert server.request_count == 1


async def test_policy_recovers_after_a_failed_call(server, new_policy):
    policy = new_policy(max_retries=1)
    server.inject("500", times=2)
    with pytest.raises(PolicyError):
        await policy.act(MESSAGES, task=TASK)
    assert (await policy.act(MESSAGES, task=TASK)).text == "echo: Task: say hi"
    assert policy.stats["calls"] == 2 and policy.stats["failures"] == 1 and policy.stats["requests"] == 3


# -- Retry-After ---------------------------------------------------------------------------------------------------


async def test_retry_after_is_honoured(server, new_policy):
    server.inject("429", times=1, retry_after=0.4)
    policy = new_policy(backoff_base=0.001, backoff_max=5.0)
    start = time.monotonic()
    await policy.act(MESSAGES, task=TASK)
    assert time.monotonic() - start >= 0.4
    assert server.request_count == 2


async def test_retry_after_is_capped_by_backoff_max(server, new_policy):
    server.inject("503", times=1, retry_after=60)
    policy = new_policy(backoff_max=0.05)
    start = time.monotonic()
    await policy.act(MESSAGES, task=TASK)
    assert time.monotonic() - start < 2.0
    assert server.request_count == 2


def test_retry_after_header_forms():
    assert _retry_after_seconds({"retry-after": "2"}) == 2.0
    assert _retry_after_seconds({"retry-after": "0.25"}) == 0.25
    assert _retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert _retry_after_seconds({}) is None
    assert _retry_after_seconds({"retry-after": "soon"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after_seconds({"retry-after": date}) <= 31


def test_backoff_is_full_jitter_under_the_cap():
    for retry in range(8):
        delays = [backoff_delay(retry, base=0.5, cap=4.0) for _ in range(200)]
        ceiling = min(4.0, 0.5 * 2**retry)
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the range, not a fixed value
    assert backoff_delay(10_000, base=0.5, cap=4.0) <= 4.0  # no overflow for huge retry counts


# -- configuration -------------------------------------------------------------------------------------------------


async def test_env_vars_give_base_url_and_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    policy = OpenAIPolicy("env-model", timeout=0.5)
    try:
        assert policy.base_url == server.base_url
        assert (await policy.act(MESSAGES, task=TASK)).text == "echo: Task: say hi"
    finally:
        await policy.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"
    assert server.requests[0].body["model"] == "env-model"


async def test_arguments_override_env_and_key_falls_back_to_placeholder(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    policy = OpenAIPolicy("m", base_url=server.base_url, timeout=0.5)
    try:
        await policy.act(MESSAGES, task=TASK)
    finally:
        await policy.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError):
        OpenAIPolicy("m", max_retries=-1)
    with pytest.raises(ValueError):
        OpenAIPolicy("m", timeout=0)


def test_policy_is_reusable_after_aclose_and_across_event_loops(server):
    policy = OpenAIPolicy("m", base_url=server.base_url, timeout=0.5, max_retries=0)

    async def act_then_close() -> str:
        try:
            return (await policy.act(MESSAGES, task=TASK)).text
        finally:
            await policy.aclose()

    for _ in range(2):  # each asyncio.run is a new loop, and aclose() does not retire the policy
        assert asyncio.run(act_then_close()) == "echo: Task: say hi"
    assert server.request_count == 2


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_policy_survives_a_new_event_loop_without_aclose(server):
    # the first loop's sockets leak (a ResourceWarning: call aclose() in the loop that used the policy), but the
    # second loop must get a fresh client instead of connections bound to a closed loop
    policy = OpenAIPolicy("m", base_url=server.base_url, timeout=0.5, max_retries=0)
    for _ in range(2):
        assert asyncio.run(policy.act(MESSAGES, task=TASK)).text == "echo: Task: say hi"
    asyncio.run(policy.aclose())
    assert server.request_count == 2
    gc.collect()  # let the leaked transports go here, under this test's warning filter


# -- concurrency ---------------------------------------------------------------------------------------------------


async def test_sixteen_concurrent_calls_share_one_client(server, new_policy):
    policy = new_policy()
    server.inject("500", times=3)
    server.inject("drop", times=2)
    convs = [[Turn(role="user", content=f"request {i}")] for i in range(16)]
    replies = await asyncio.gather(*(policy.act(c, task=TASK) for c in convs))
    assert [r.text for r in replies] == [f"echo: request {i}" for i in range(16)]
    assert server.request_count == 16 + 5
    assert policy.stats["calls"] == 16 and policy.stats["retries"] == 5 and policy.stats["failures"] == 0
    assert policy.stats["completion_tokens"] == 16 * 3
    assert sum((r.usage for r in replies), Usage()) == Usage(prompt_tokens=32, completion_tokens=48, requests=16)


async def test_cancelled_call_does_not_break_the_policy(server, new_policy):
    policy = new_policy(timeout=5.0)
    server.inject("slow", delay=3.0)
    call = asyncio.create_task(policy.act(MESSAGES, task=TASK))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await policy.act(MESSAGES, task=TASK)).text == "echo: Task: say hi"
