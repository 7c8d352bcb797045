"""Request size limits of ``agenttuning serve``: a body limit enforced before the body is read.

A client can send a body of any size; parsing and tokenising it costs memory and CPU in proportion (a 10 MB prompt
once took 1.2 GB and 27 s). :class:`BodyLimit` answers 413 with OpenAI's error body as soon as a body is known to
be over the limit, and never holds more than the limit of it:

- a ``Content-Length`` over the limit gets the 413 at once, before any of the body is read (the server discards
  what the client still sends);
- a body without one (chunked) is counted as the app reads it, and reading stops with :class:`PayloadTooLarge`
  (an HTTP exception FastAPI passes on to the app's handlers) once the count passes the limit.

Pure ASGI (no buffering, no Starlette ``BaseHTTPMiddleware``), so it adds nothing per request but a header lookup.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from agenttuning.serve.protocol import error_body

__all__ = ["BodyLimit", "PayloadTooLarge", "too_large_message"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def too_large_message(size: int | None, limit: int) -> str:
    got = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return f"the request body is {got}, over this server's limit of {limit:,} bytes (agenttuning serve --max-body-mb)"


class PayloadTooLarge(HTTPException):
    """Raised from ``receive`` when a body without ``Content-Length`` passes the limit; answered as a 413."""

    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(None, limit))


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most ``max_bytes``, else 413 (see the module docstring).

    ``on_reject`` is called for each 413 sent from here (the server's error counter).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, on_reject: Callable[[], None]) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return
        seen = 0

        async def counted() -> Message:
            # also with a Content-Length: servers enforce it, but this does not depend on that
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _reject(self, send: Send, size: int) -> None:
        self.on_reject()
        body = json.dumps(error_body(413, too_large_message(size, self.max_bytes), code="request_too_large"))
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body.encode()})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server rejects a malformed one before the app sees it; if not, count instead
                return None
    return None
