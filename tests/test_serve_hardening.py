"""``agenttuning serve`` under hostile and careless clients: a real uvicorn server on 127.0.0.1, a tiny Llama 3.

Issue 11, kind 4 (work on the event loop, unbounded request sizes): an oversized body gets 413 without being read
(with and without ``Content-Length``), three at once leave the process's memory flat, a prompt far too long for
the context is refused before it is tokenised, and ``/health`` answers while a long prompt is being tokenised.
Kind 6 (server errors that should be client errors): a table of malformed and out-of-range requests, each of which
must get a 4xx with OpenAI's error body, never a 500, after which the server still answers a normal request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
psutil = pytest.importorskip("psutil")

import httpx  # noqa: E402

from agenttuning.serve import create_app  # noqa: E402
from tests.test_serve import ServerThread  # noqa: E402
from tests.tiny_models import tiny_llama3  # noqa: E402

NAME = "tiny-agentlm"
GOOD = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 2}
BIG = 10 << 20  # the size that once took 27 s and 1.2 GB to tokenise; over the default 4 MiB body limit
CLIENT_TIMEOUT = 15  # the server answers these in milliseconds; a server that reads and tokenises them does not


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3()


@pytest.fixture(scope="module")
def server(tiny):
    """The server with its default limits (the tiny model's context is 2,048 tokens)."""
    with ServerThread(create_app(tiny[0], tiny[1], served_name=NAME, max_new_tokens_default=4)) as srv:
        yield srv


def big_body(size: int = BIG) -> bytes:
    """A well-formed request whose one message makes the body ``size`` bytes long."""
    head = json.dumps({"model": NAME, "messages": [{"role": "user", "content": ""}]})
    filler = "lorem ipsum " * (size // 12 + 1)
    return head.replace('"content": ""', f'"content": "{filler[: size - len(head)]}"').encode()


def assert_error(r: httpx.Response, status: int, *, code: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    return error


# -- kind 4: sizes and the event loop ---------------------------------------------------------------------------------
def test_an_oversized_body_gets_413_with_or_without_content_length(server):
    body = big_body()
    assert len(body) == BIG

    async def chunks():  # no Content-Length: the limit must hold while the body streams in
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    async def run():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
            sized = await c.post("/chat/completions", content=body, headers={"content-type": "application/json"})
            chunked = await c.post("/chat/completions", content=chunks(), headers={"content-type": "application/json"})
            after = await c.post("/chat/completions", json=GOOD)  # the same connection pool: still usable
            return sized, chunked, after

    sized, chunked, after = asyncio.run(run())
    assert "content-length" not in chunked.request.headers
    assert "limit of 4,194,304 bytes" in assert_error(sized, 413, code="request_too_large")["message"]
    assert "limit of 4,194,304 bytes" in assert_error(chunked, 413, code="request_too_large")["message"]
    assert after.status_code == 200, after.text


def test_three_concurrent_oversized_requests_leave_memory_flat(server):
    bodies = [big_body() for _ in range(3)]  # allocated before the baseline: only the server's share is measured
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    async def run():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
            return await asyncio.gather(*(c.post("/chat/completions", content=b,
                                                 headers={"content-type": "application/json"}) for b in bodies),
                                        return_exceptions=True)  # fmt: skip

    before = process.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        responses = asyncio.run(run())
    finally:
        done.set()
        sampler.join()
    growth = max(peak[0], process.memory_info().rss) - before
    assert growth < 150 << 20, f"RSS grew by {growth >> 20} MiB while three 10 MiB requests were answered"
    for r in responses:
        assert isinstance(r, httpx.Response), r
        assert_error(r, 413, code="request_too_large")


def test_prompts_too_long_for_the_context_are_400_context_length_exceeded(server):
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
        # far over: refused on its characters (16 per context token by default), before any tokenising
        chars = c.post("/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": "x" * 40_000}]})
        error = assert_error(chars, 400, code="context_length_exceeded")
        assert "40,000 characters" in error["message"] and "32,768" in error["message"]
        assert error["param"] == "messages"
        # under the character bound but over the 2,048-token context: refused on its tokens
        words = " ".join(f"w{i}" for i in range(4000))
        tokens = c.post("/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": words}]})
        assert "tokens" in assert_error(tokens, 400, code="context_length_exceeded")["message"]


def test_health_answers_while_a_long_prompt_is_tokenised(tiny):
    """A long prompt within the body and character limits costs about a second of tokenising; meanwhile every
    ``/health`` call must come back within 0.5 s (it waited for the whole tokenisation when that ran on the loop)."""
    app = create_app(tiny[0], tiny[1], served_name=NAME, max_new_tokens_default=4, max_prompt_chars=2_000_000)
    body = big_body(1_500_000)

    async def run(base: str):
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
            await c.get(f"{base}/health")  # a warm connection for the probes
            started = time.monotonic()
            big = asyncio.create_task(c.post(f"{base}/v1/chat/completions", content=body,
                                             headers={"content-type": "application/json"}))  # fmt: skip
            latencies = []
            while not big.done():
                t = time.monotonic()
                assert (await c.get(f"{base}/health")).status_code == 200
                latencies.append(time.monotonic() - t)
                await asyncio.sleep(0.02)
            return await big, time.monotonic() - started, latencies

    with ServerThread(app) as srv:
        response, took, latencies = asyncio.run(run(f"http://127.0.0.1:{srv.port}"))
    assert_error(response, 400, code="context_length_exceeded")  # ~370k tokens: over the context, after tokenising
    assert took > 0.5, f"the long request took only {took:.2f}s: too short to tell"
    assert len(latencies) >= 3 and max(latencies) < 0.5, (took, latencies)


# -- kind 6: every malformed request is a 4xx ------------------------------------------------------------------------
NUMERIC = ["temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "n", "presence_penalty",
           "frequency_penalty", "top_logprobs"]  # fmt: skip
# raw JSON text, so NaN and the infinities reach the server as Python's json module reads them
OUT_OF_EVERY_RANGE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(2**70), str(-(2**70)), "9" * 5000,
                      '"abc"', "[1]", '{"a": 1}']  # fmt: skip
SPECIFIC = {
    "seed": ["-1", str(2**64)],
    "temperature": ["-0.1", "2.5"],
    "top_p": ["-0.5", "1.5"],
    "max_tokens": ["0", "-5", str(2**31)],
    "n": ["0", "2"],
    "presence_penalty": ["3", "1"],  # in range but unsupported: still a 400
    "top_logprobs": ["21", "-1"],
}
DEEP = "[" * 50_000 + "]" * 50_000


def messages(content: str) -> str:
    """A one-message list as raw JSON text, ``content`` a JSON fragment."""
    return '[{"role": "user", "content": ' + content + "}]"


def body(**fields: str) -> str:
    """A request as raw JSON text: GOOD, sampled (so that a seed is used), with ``fields`` replaced by the given
    JSON fragments."""
    parts = {k: json.dumps(v) for k, v in {**GOOD, "temperature": 1.0}.items()} | fields
    return "{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}"


STRUCTURAL = {
    "messages empty": body(messages="[]"),
    "messages a string": body(messages='"hi"'),
    "messages null": body(messages="null"),
    "message empty object": body(messages="[{}]"),
    "message without content": body(messages='[{"role": "user"}]'),
    "role tool": body(messages='[{"role": "tool", "content": "x"}]'),
    "role a number": body(messages='[{"role": 7, "content": "x"}]'),
    "content an object": body(messages=messages('{"a": 1}')),
    "content a number": body(messages=messages("12")),
    "content nested lists": body(messages=messages('[[["x"]]]')),
    "content image part": body(messages=messages('[{"type": "image_url", "image_url": {"url": "x"}}]')),
    "content deeply nested": body(messages=messages(DEEP)),
    "extra field deeply nested": body(user=DEEP),
    # JSON escapes of lone UTF-16 surrogates: valid JSON, not valid Unicode text
    "lone surrogate in content": body(messages=messages('"a\\ud800b"')),
    "lone surrogate in a text part": body(messages=messages('[{"type": "text", "text": "a\\udfffb"}]')),
    "lone surrogate in a name": body(messages='[{"role": "user", "content": "hi", "name": "\\ud834"}]'),
    "lone surrogate in stop": body(stop='["ok", "\\ud800"]'),
    "lone surrogate as a logit_bias key": body(logit_bias='{"\\ud800": 1}'),
    "lone surrogate in model": body(model='"\\ud800"'),
    "too many messages": body(messages=json.dumps([{"role": "user", "content": "x"}] * 10_001)),
    "too many stops": body(stop=json.dumps(["s"] * 17)),
    "a stop too long": body(stop=json.dumps("s" * 1001)),
    "stop a number": body(stop="5"),
    "logit_bias not token ids": body(logit_bias='{"hello": 1}'),
    "logit_bias out of range": body(logit_bias='{"12": 101}'),
    "logit_bias NaN": body(logit_bias='{"12": NaN}'),
    "model too long": body(model=json.dumps("m" * 1001)),
    "model missing": "{" + '"messages": [{"role": "user", "content": "hi"}]' + "}",
    "stream not a bool": body(stream='"maybe"'),
    "stream_options junk": body(stream_options='{"include_usage": [1]}'),
    "tools": body(tools='[{"type": "function", "function": {"name": "f"}}]'),
    "response_format json": body(response_format='{"type": "json_object"}'),
    "response_format a list": body(response_format="[1]"),
    "body an array": "[1, 2]",
    "body a string": '"hello"',
    "body null": "null",
    "body empty": "",
    "body not json": "{not json",
    "body truncated": body()[:-5],
}
CASES = (
    [(f"{field}={value[:12]}", body(**{field: value})) for field in NUMERIC for value in OUT_OF_EVERY_RANGE]
    + [(f"{field}={value}", body(**{field: value})) for field, values in SPECIFIC.items() for value in values]
    + list(STRUCTURAL.items())
)


def test_malformed_requests_get_4xx_with_an_error_body_never_500(server):
    raw = {"content-type": "application/json"}
    failures = []
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
        for name, text in CASES:
            try:
                r = c.post("/chat/completions", content=text.encode("utf-8", "surrogatepass"), headers=raw)
            except httpx.TimeoutException:  # e.g. a huge max_tokens taken at its word
                failures.append(f"{name}: no answer within {CLIENT_TIMEOUT}s")
                continue
            except httpx.TransportError as e:  # the server dropped the connection instead of answering
                failures.append(f"{name}: {type(e).__name__}: {e}")
                continue
            try:
                error = r.json()["error"]
                ok = 400 <= r.status_code < 500 and error["message"] and error["type"] == "invalid_request_error"
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                failures.append(f"{name}: {r.status_code} {r.text[:200]}")
        not_utf8 = b'{"model": "%s", "messages": [{"role": "user", "content": "\xff\xfe"}]}' % NAME.encode()
        invalid_utf8 = c.post("/chat/completions", content=not_utf8, headers=raw)
        if invalid_utf8.status_code != 400:
            failures.append(f"invalid UTF-8: {invalid_utf8.status_code} {invalid_utf8.text[:200]}")
        normal = c.post("/chat/completions", json={**GOOD, "temperature": 1.0, "seed": 2**64 - 1})
        health = c.get(f"http://127.0.0.1:{server.port}/health")
    assert not failures, f"{len(failures)} of {len(CASES) + 1} bad requests not answered 4xx:\n" + "\n".join(failures)
    assert normal.status_code == 200 and normal.json()["choices"][0]["message"]["role"] == "assistant", normal.text
    assert health.status_code == 200


def test_validation_messages_name_the_field_without_union_noise(server):
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
        seed = assert_error(c.post("/chat/completions", json={**GOOD, "seed": 2**70}), 400)
        stops = assert_error(c.post("/chat/completions", json={**GOOD, "stop": ["s"] * 17}), 400)
        many = assert_error(c.post("/chat/completions", json={**GOOD, "messages": [{"role": "x"}] * 50}), 400)
    assert seed["param"] == "seed" and "18446744073709551615" in seed["message"]
    assert stops["param"] == "stop" and "at most 16" in stops["message"] and "constrained" not in stops["message"]
    assert "more" in many["message"] and len(many["message"]) < 2000
