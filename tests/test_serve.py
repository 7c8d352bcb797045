"""``agenttuning serve``: a real uvicorn server on 127.0.0.1 over a tiny random-init Llama 3, all offline.

What can go wrong and is checked here: the answer differs from the ``hf:`` policy on the same messages (rendering,
ids, decoding), usage counts, ``stop`` and ``max_tokens`` handling and the finish reason (including the ambiguous
case of a stop token landing exactly on the last allowed token), concurrent requests not being batched, error
bodies and statuses, streaming, per-request sampling settings, and the official ``openai`` SDK and our
:class:`OpenAIPolicy` both talking to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import httpx  # noqa: E402
import openai  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from agenttuning.policies.hf import HFPolicy  # noqa: E402
from agenttuning.policies.openai import OpenAIPolicy  # noqa: E402
from agenttuning.schema import Task, Turn  # noqa: E402
from agenttuning.serve import create_app, serve  # noqa: E402
from agenttuning.serve.backends import HFBackend, Sampling  # noqa: E402
from tests.tiny_models import tiny_llama3  # noqa: E402

NAME = "tiny-agentlm"
MAX_NEW = 12
TASK = Task(id="t-0001", env="toy-v1", split="test", instruction="look it up")
EOT = 128009  # <|eot_id|>, the Llama 3 template's end of turn


def conversation(i: int) -> list[dict[str, str]]:
    """OpenAI messages of different lengths and roles."""
    messages = [
        {"role": "system", "content": "You are an agent. Reply with Thought and Action."},
        {"role": "user", "content": f"Task {i}: find the word" + " please" * i},
    ]
    if i % 2:
        messages += [
            {"role": "assistant", "content": "Thought: look.\nAction: lookup x"},
            {"role": "user", "content": f"Observation: {i * 7}"},
        ]
    return messages


def turns(messages: list[dict[str, str]]) -> list[Turn]:
    return [Turn(role=m["role"], content=m["content"]) for m in messages]


class ServerThread:
    """uvicorn serving ``app`` on an ephemeral 127.0.0.1 port in a background thread (with its own event loop)."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="serve-test", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "uvicorn did not shut down"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3()


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(
        tiny[0], tiny[1], served_name=NAME, max_new_tokens_default=MAX_NEW, batch_size=8, batch_wait_ms=50
    )
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture
async def client(server):
    async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture
async def direct(tiny):
    """HFPolicy on the same model object, called in-process: the reference the server must reproduce."""
    policy = HFPolicy(tiny[0], tokenizer=tiny[1], max_new_tokens=MAX_NEW, batch_wait_ms=0)
    yield policy
    await policy.aclose()


def expected_finish(policy: HFPolicy, messages: list[dict[str, str]]) -> str:
    completion = policy.generate_batch([policy.encode(turns(messages))])[0]
    return "stop" if completion[-1] in policy.stop_token_ids else "length"


def template_length(tok, messages: list[dict[str, str]]) -> int:
    return len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


# -- completions -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("i", [0, 1])
async def test_sdk_completion_equals_hf_policy(client, direct, tiny, i):
    messages = conversation(i)
    response = await client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=MAX_NEW)
    reply = await direct.act(turns(messages), task=TASK)

    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.model == NAME and isinstance(response.created, int)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reply.text and reply.text
    assert choice.finish_reason == expected_finish(direct, messages)
    usage = response.usage
    assert usage.prompt_tokens == template_length(tiny[1], messages) == reply.usage.prompt_tokens
    assert usage.completion_tokens == reply.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_openai_policy_against_the_server(server, direct):
    policy = OpenAIPolicy(NAME, base_url=server.base_url, api_key="x", temperature=0.0, max_tokens=MAX_NEW)
    try:
        reply = await policy.act(turns(conversation(3)), task=TASK)
    finally:
        await policy.aclose()
    expected = await direct.act(turns(conversation(3)), task=TASK)
    assert reply.text == expected.text
    assert reply.usage == expected.usage


async def test_stop_sequences_cut_the_text(client):
    messages = conversation(2)
    full = (await client.chat.completions.create(model=NAME, messages=messages, temperature=0)).choices[0]
    text = full.message.content
    assert len(text) >= 4, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = await client.chat.completions.create(
        model=NAME, messages=messages, temperature=0, stop=["never-in-the-text-xyz", stop]
    )
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    single = await client.chat.completions.create(model=NAME, messages=messages, temperature=0, stop=stop)
    assert single.choices[0].message.content == text[: text.find(stop)]
    absent = await client.chat.completions.create(model=NAME, messages=messages, temperature=0, stop="zzz-absent")
    assert absent.choices[0].message.content == text
    assert absent.choices[0].finish_reason == full.finish_reason


async def test_max_tokens_is_respected_and_reported_as_length(client, tiny):
    messages = conversation(4)
    reference = HFPolicy(tiny[0], tokenizer=tiny[1], max_new_tokens=3)
    try:
        completion = reference.generate_batch([reference.encode(turns(messages))])[0]
        expected = await reference.act(turns(messages), task=TASK)
    finally:
        await reference.aclose()
    assert EOT not in completion, "pick a conversation whose first 3 greedy tokens hold no stop token"
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 9}):
        r = await client.chat.completions.create(model=NAME, messages=messages, temperature=0, **limit)
        assert r.usage.completion_tokens == 3
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.content == expected.text


async def test_finish_reason_stop_on_end_of_turn_even_at_the_limit(tiny):
    """A model forced to end its turn with its 3rd token, asked for at most 3 tokens: "stop", not "length"."""
    model, tok = tiny_llama3(seed=1)
    calls = {"n": 0}

    def end_turn_at_third_token(module, inputs, logits):
        calls["n"] += 1
        if calls["n"] >= 3:
            logits[..., EOT] += 1e4
        return logits

    model.lm_head.register_forward_hook(end_turn_at_third_token)
    app = create_app(model, tok, served_name=NAME)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test/v1") as c:
            r = await c.post("/chat/completions", json={"model": NAME, "messages": conversation(0), "max_tokens": 3,
                                                        "temperature": 0})  # fmt: skip
    finally:
        await app.state.backend.aclose()
    body = r.json()
    assert r.status_code == 200, body
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "<|eot_id|>" not in body["choices"][0]["message"]["content"]


async def test_concurrent_requests_share_generate_batches(server, client, http, tiny):
    before = (await http.get("/stats")).json()
    conversations = [conversation(i) for i in range(8)]
    responses = await asyncio.gather(
        *(client.chat.completions.create(model=NAME, messages=m, temperature=0) for m in conversations)
    )
    after = (await http.get("/stats")).json()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8
    assert after["max_batch"] > 1
    assert server.app.state.backend.stats()["requests"] == after["requests"]
    reference = HFPolicy(tiny[0], tokenizer=tiny[1], max_new_tokens=MAX_NEW, batch_wait_ms=0)
    try:  # batched greedy replies equal unbatched ones (left padding with the mask)
        for m, r in zip(conversations, responses, strict=True):
            assert r.choices[0].message.content == (await reference.act(turns(m), task=TASK)).text
    finally:
        await reference.aclose()


# -- errors ----------------------------------------------------------------------------------------------------------
GOOD = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 2}


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"n": 2}, 400, "n=2"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        ({"messages": [{"role": "user"}]}, 400, "no content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "type"),
        ({"temperature": -1}, 400, "temperature"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"model": "gpt-4o"}, 404, NAME),
    ],
)
async def test_bad_requests_get_openai_error_bodies(http, change, status, needle):
    r = await http.post("/chat/completions", json={**GOOD, **change})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_malformed_json_and_unknown_route(http):
    r = await http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = await http.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route GET /v1/nowhere"


async def test_the_sdk_sees_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.status_code == 400 and "n=2" in caught.value.message


async def test_generation_failure_is_a_500(tiny, monkeypatch):
    def boom(self, prompts):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(HFPolicy, "generate_batch", boom)  # fault injection: the batch's generate raises
    app = create_app(tiny[0], tiny[1], served_name=NAME)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test/v1") as c:
            r = await c.post("/chat/completions", json=GOOD)
            stats = (await c.get("/stats")).json()
    finally:
        await app.state.backend.aclose()
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and "simulated" in r.json()["error"]["message"]
    assert stats["failed_batches"] == 1 and stats["server"]["errors"] == 1


# -- other endpoints -------------------------------------------------------------------------------------------------
async def test_models_and_health(server, client, http):
    assert [m.id for m in (await client.models.list()).data] == [NAME]
    health = (await http.get(f"http://127.0.0.1:{server.port}/health")).json()
    assert health == {"status": "ok", "model": NAME, "backend": "hf"}


async def test_streaming_concatenates_to_the_plain_reply(client, http):
    messages = conversation(5)
    plain = await client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    stream = await client.chat.completions.create(
        model=NAME, messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == NAME for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == plain.usage.model_dump()

    # the raw wire format: "data: {json}" events separated by blank lines, ending with "data: [DONE]"
    r = await http.post("/chat/completions", json={"model": NAME, "messages": messages, "temperature": 0,
                                                   "stream": True})  # fmt: skip
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len({p["id"] for p in payloads}) == 1
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == text


# -- sampling settings -----------------------------------------------------------------------------------------------
async def test_seeded_sampling_is_reproducible(client):
    def ask(seed):
        return client.chat.completions.create(
            model=NAME, messages=conversation(1), temperature=1.0, top_p=0.9, seed=seed, max_tokens=8
        )

    a, b, c = await ask(7), await ask(7), await ask(8)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 8
    assert c.choices[0].message.content != a.choices[0].message.content  # near-uniform random model: seeds differ


async def test_one_policy_per_setting_within_a_bounded_pool(tiny):
    backend = HFBackend(HFPolicy(tiny[0], tokenizer=tiny[1], max_new_tokens=4), max_policies=2)
    try:
        results = [
            await backend.complete(turns(conversation(0)), Sampling(temperature=t, top_p=1.0, max_tokens=n))
            for t, n in [(0.0, 4), (0.0, 2), (0.7, 3), (0.0, 4), (0.0, 2)]
        ]
        stats = backend.stats()
    finally:
        await backend.aclose()
    assert [r.completion_tokens <= n for r, n in zip(results, [4, 2, 3, 4, 2], strict=True)] == [True] * 5
    assert results[0].text == results[3].text and results[1].text == results[4].text  # greedy: same setting, same text
    assert stats["policies"] == 2 and stats["requests"] == 5 and stats["batches"] == 5
    assert backend.stats()["requests"] == 5  # closed policies' counters are kept


def test_serve_runs_uvicorn_with_the_app(tiny, monkeypatch):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(tiny[0], port=8123, tokenizer=tiny[1], served_name=NAME)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["app"].state.served_name == NAME and seen["app"].state.backend.kind == "hf"
