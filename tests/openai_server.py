"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with scripted fault injection.

``POST /v1/chat/completions`` answers with the OpenAI response JSON (``choices``, ``usage``); the reply text comes
from a ``responder(messages) -> str`` callable, so a test can plug in anything from an echo to an environment's
expert and drive real episodes through :class:`agenttuning.policies.openai.OpenAIPolicy`. ``GET /v1/models`` lists
the one model name the server has seen (or ``"fake-model"``).

Faults are a FIFO script applied to the next requests, one fault per request::

    with FakeOpenAIServer(lambda messages: "Action: noop") as srv:
        srv.inject("429", times=2, retry_after=0.1)   # the next two requests get 429 + Retry-After: 0.1
        srv.inject("slow", delay=2.0)                  # then one request that hangs for 2 s
        srv.inject("500", times=None)                  # then 500 on every request, until srv.clear_faults()
        ...  # point a client at srv.base_url
        assert srv.request_count == ...
        srv.requests[0].body["model"], srv.requests[0].headers["authorization"]

Fault kinds (``FAULTS``):

- an HTTP status as a string (``"400"``, ``"401"``, ``"404"``, ``"422"``, ``"429"``, ``"500"``, ``"503"`` ...):
  that status with an OpenAI-style error body; ``retry_after=`` (seconds) adds a ``Retry-After`` header.
- ``"slow"``: sleep ``delay`` seconds (default 5) before answering normally, in small steps that watch the stop flag,
  so a slow handler never holds up shutdown.
- ``"malformed"``: 200 with a body that is not JSON (``content_type=`` picks the header, default application/json).
- ``"no_choices"``: 200 JSON without ``choices``; ``"empty_choices"``: ``choices: []``;
  ``"null_content"``: one choice whose ``message.content`` is null.
- ``"no_usage"``: a normal reply without the ``usage`` object (as some local servers send).
- ``"drop"``: read the request and close the connection without answering.

Usage numbers are whitespace-separated word counts of the prompt and the reply: deterministic, not a tokenizer.
Handler threads are daemons and the server polls for shutdown every 50 ms, so leaving the ``with`` block is fast.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict[str, Any]]], str]

FAULTS = ("slow", "malformed", "no_choices", "empty_choices", "null_content", "no_usage", "drop")


def echo_responder(messages: list[dict[str, Any]]) -> str:
    """Default responder: echoes the last message."""
    return f"echo: {messages[-1]['content']}" if messages else "echo:"


@dataclass(frozen=True)
class Fault:
    """One scripted fault: its kind and options (``retry_after``, ``delay``, ``content_type``)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received: path, lower-cased headers, parsed JSON body (None if not JSON), fault applied."""

    path: str
    headers: dict[str, str]
    body: Any
    fault: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler never keeps the process (or shutdown) waiting
    request_queue_size = 128  # the default listen backlog of 5 stalls bursts of concurrent connects


class FakeOpenAIServer:
    """An OpenAI-compatible chat server on an ephemeral loopback port; use it as a context manager."""

    def __init__(self, responder: Responder = echo_responder, *, host: str = "127.0.0.1") -> None:
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._persistent: Fault | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = 0
        self._httpd = _Server((host, 0), _make_handler(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- faults ---------------------------------------------------------------------------------------------------
    def inject(self, kind: str, times: int | None = 1, **options: Any) -> None:
        """Apply fault ``kind`` to the next ``times`` requests (after those already scripted); None: every request
        from then on until :meth:`clear_faults`."""
        if not (kind.isdigit() or kind in FAULTS):
            raise ValueError(f"unknown fault {kind!r}: an HTTP status like '429' or one of {FAULTS}")
        fault = Fault(kind, options)
        with self._lock:
            if times is None:
                self._persistent = fault
            else:
                self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._persistent = None

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            return self._persistent

    # -- counters -------------------------------------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        """Chat-completion requests received (faulted ones included)."""
        with self._lock:
            return len(self.requests)

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)
            self._counter += 1

    def _completion(self, body: dict[str, Any], *, content: Any, choices: bool = True, usage: bool = True) -> dict:
        messages = body.get("messages", [])
        with self._lock:
            n = self._counter
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
        }
        if choices:
            out["choices"] = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ]
        if usage:
            prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
            completion = len(str(content or "").split())
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return out

    def _reply_text(self, body: dict[str, Any]) -> str:
        text = self.responder(body.get("messages", []))
        stop = body.get("stop")
        for s in [stop] if isinstance(stop, str) else stop or []:  # honour stop sequences like a real server
            if s and s in text:
                text = text[: text.index(s)]
        return text


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers
        timeout = 10  # an idle keep-alive connection's thread ends after this

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: Any, *, content_type: str = "application/json", headers=None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):  # the client gave up (timeout)
                self.close_connection = True

        def _error(self, status: int, message: str, *, headers=None) -> None:
            err = {"error": {"message": message, "type": "fake_error", "param": None, "code": status}}
            self._send(status, err, headers=headers)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                with server._lock:
                    models = {r.body.get("model") for r in server.requests if isinstance(r.body, dict)}
                names = sorted(m for m in models if isinstance(m, str)) or ["fake-model"]
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in names]})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route POST {self.path}")
                return
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            fault = server._next_fault()
            headers = {k.lower(): v for k, v in self.headers.items()}
            server._record(RecordedRequest(self.path, headers, body, fault.kind if fault else None))
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or "model" not in body:
                self._error(400, "request body must be JSON with 'model' and a 'messages' list")
                return
            kind, opts = (fault.kind, fault.options) if fault else (None, {})

            if kind == "drop":
                self.close_connection = True  # no response at all; the connection closes when we return
                return
            if kind is not None and kind.isdigit():
                extra = {"Retry-After": opts["retry_after"]} if "retry_after" in opts else None
                self._error(int(kind), f"injected fault {kind}", headers=extra)
                return
            if kind == "slow":
                deadline = time.monotonic() + float(opts.get("delay", 5.0))
                while time.monotonic() < deadline and not server._stop.is_set():
                    time.sleep(0.02)
                if server._stop.is_set():
                    self.close_connection = True
                    return
            if kind == "malformed":
                self._send(200, b"this is {not json", content_type=opts.get("content_type", "application/json"))
                return

            try:
                text = server._reply_text(body)
            except Exception as e:  # a broken responder shows up as a server error, not a hung test
                self._error(500, f"responder raised {type(e).__name__}: {e}")
                return
            if kind == "no_choices":
                self._send(200, server._completion(body, content=text, choices=False))
            elif kind == "empty_choices":
                payload = server._completion(body, content=text)
                payload["choices"] = []
                self._send(200, payload)
            elif kind == "null_content":
                self._send(200, server._completion(body, content=None))
            else:
                self._send(200, server._completion(body, content=text, usage=kind != "no_usage"))

    return Handler
