"""The OpenAI chat-completions wire format, as far as ``agenttuning serve`` speaks it: request model, responses, errors.

Pure data and pure functions (no model, no HTTP server), so the format is checked on its own. The request model
follows OpenAI's ``POST /v1/chat/completions`` body: fields we implement are typed and validated; fields we cannot
honour (``n > 1``, ``logprobs``, tools, JSON mode, penalties, ``logit_bias``) are typed too, so that
:func:`unsupported` can refuse them with a clear 400 instead of silently ignoring them; anything else a client sends
(``user``, ``metadata``, ``store`` ...) is accepted and ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.schema import Turn

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "ChatMessage",
    "Completion",
    "apply_stop",
    "completion_body",
    "error_body",
    "stream_events",
    "to_turns",
    "unsupported",
]


class APIError(Exception):
    """An error the server answers with an OpenAI-style body: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self, status: int, message: str, *, type: str | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str, *, type: str | None = None, param: str | None = None, code: Any = None):
    """The JSON body OpenAI sends with an error status (the SDK reads ``error.message``)."""
    kind = type or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------------------------
# Requests


class TextPart(BaseModel):
    """One part of a multi-part message content; only text parts are understood."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``. Tool and function messages are refused."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request body. ``None`` means "the server's default" (see :func:`agenttuning.serve.create_app`)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # refused unless left at their defaults (see unsupported())
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple of non-empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)

    def token_limit(self, default: int) -> int:
        """``max_completion_tokens`` (OpenAI's current name), else ``max_tokens``, else ``default``."""
        return self.max_completion_tokens or self.max_tokens or default


def unsupported(req: ChatCompletionRequest) -> APIError | None:
    """The first field set to something this server cannot do, as a 400 error (None when all is fine)."""
    if req.n not in (None, 1):
        return APIError(400, f"n={req.n} is not supported: this server returns one choice per request", param="n")
    checks = [
        ("logprobs", bool(req.logprobs) or req.top_logprobs not in (None, 0)),
        ("tools", bool(req.tools) or req.tool_choice not in (None, "none") or bool(req.functions)),
        ("function_call", req.function_call not in (None, "none")),
        ("response_format", req.response_format is not None and req.response_format.get("type") != "text"),
        ("presence_penalty", bool(req.presence_penalty)),
        ("frequency_penalty", bool(req.frequency_penalty)),
        ("logit_bias", bool(req.logit_bias)),
    ]
    for param, refused in checks:
        if refused:
            return APIError(400, f"{param} is not supported by this server", param=param)
    return None


def to_turns(messages: list[ChatMessage]) -> list[Turn]:
    """The request's messages as :class:`~agenttuning.schema.Turn` objects (text parts joined with newlines)."""
    turns = []
    for i, m in enumerate(messages):
        if m.content is None:
            raise APIError(400, f"messages[{i}] has no content: only text messages are supported", param="messages")
        content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content)
        turns.append(Turn(role="system" if m.role == "developer" else m.role, content=content))
    return turns


# ---------------------------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class Completion:
    """What a backend produced for one request; ``finish_reason`` is ``"stop"`` or ``"length"``."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def apply_stop(completion: Completion, stops: tuple[str, ...]) -> Completion:
    """Cut the text before the earliest stop sequence (which is not included); finish_reason becomes ``"stop"``.

    >>> apply_stop(Completion("a b STOP c END", "length", 3, 7), ("END", "STOP")).text
    'a b '
    """
    cut = min((i for i in (completion.text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return completion
    return Completion(completion.text[:cut], "stop", completion.prompt_tokens, completion.completion_tokens)


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(completion: Completion, *, model: str, id: str | None = None) -> dict[str, Any]:
    """The ``chat.completion`` response object."""
    return {
        "id": id or new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage(),
    }


def stream_events(completion: Completion, *, model: str, include_usage: bool = False) -> Iterator[str]:
    """Server-sent events of an already generated completion, as OpenAI streams them.

    A first chunk with the assistant role, one chunk with the whole text, a last chunk with the finish reason, with
    ``include_usage`` one more chunk with empty ``choices`` and the usage, then ``data: [DONE]``.
    """
    base = {"id": new_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant", "content": ""}, None)]
    if completion.text:
        deltas.append(({"content": completion.text}, None))
    deltas.append(({}, completion.finish_reason))
    for delta, finish in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            chunk["usage"] = None
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': completion.usage()})}\n\n"
    yield "data: [DONE]\n\n"
