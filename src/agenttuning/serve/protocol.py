"""The OpenAI chat-completions wire format, as far as ``agenttuning serve`` speaks it: request model, responses, errors.

Pure data and pure functions (no model, no HTTP server), so the format is checked on its own. The request model
follows OpenAI's ``POST /v1/chat/completions`` body: fields we implement are typed and validated; fields we cannot
honour (``n > 1``, ``logprobs``, tools, JSON mode, penalties, ``logit_bias``) are typed too, so that
:func:`unsupported` can refuse them with a clear 400 instead of silently ignoring them; anything else a client sends
(``user``, ``metadata``, ``store`` ...) is accepted and ignored, as OpenAI-compatible servers do.

Every field's range is checked here, so that any user mistake is a 400 with OpenAI's error body and a 500 always
means a bug: numbers within what the backends accept (``seed`` an unsigned 64-bit value, as
``torch.Generator.manual_seed`` takes; no NaN or infinity), bounded list and string sizes (``stop``, ``messages``,
``logit_bias``), and text that is valid Unicode (a lone UTF-16 surrogate, which JSON's ``"\\ud800"`` escape can
carry, cannot be tokenised or encoded back to UTF-8).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    # messages and params may quote the request (a dict key, an exception's text): a lone surrogate there would make
    # the response itself unencodable (a 500 while reporting a 400), so such characters are written as escapes
    return {"error": {"message": _printable(message), "type": kind, "param": _printable(param), "code": code}}


def _printable(text: str | None) -> str | None:
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Requests


#: most ``seed`` a backend takes: ``torch.Generator.manual_seed`` (and vLLM's per-request generator) wants an
#: unsigned 64-bit value; negative seeds are refused rather than silently wrapped around
SEED_MAX = 2**64 - 1
#: a bound on ``max_tokens`` for when the model's context is unknown (otherwise it is capped to the context)
MAX_TOKENS_MAX = 2**31 - 1
MAX_MESSAGES = 10_000
MAX_STOPS = 16  # OpenAI takes 4; vLLM any number. Each one is searched for in every reply.
MAX_STOP_CHARS = 1_000
MAX_NAME_CHARS = 1_000  # the model name and a message's name (echoed back in errors)

_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str | None) -> str | None:
    """``text`` unchanged, or a ValueError when it holds a lone surrogate (not Unicode text; cannot be tokenised)."""
    if text is not None:
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise ValueError(
                f"character {bad.start()} is a lone UTF-16 surrogate (U+{ord(bad.group()):04X}), which is not valid "
                "Unicode text: send UTF-8 text"
            )
    return text


class TextPart(BaseModel):
    """One part of a multi-part message content; only text parts are understood."""

    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text_is_text(cls, v: str) -> str:
        return _valid_text(v)


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``. Tool and function messages are refused."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @field_validator("content", "name")
    @classmethod
    def _content_is_text(cls, v: str | list[TextPart] | None) -> str | list[TextPart] | None:
        return _valid_text(v) if isinstance(v, str) else v


class StreamOptions(BaseModel):
    include_usage: bool = False


Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Penalty = Annotated[float, Field(ge=-2, le=2)]  # OpenAI's range (NaN and infinities fail it too)
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]


class ChatCompletionRequest(BaseModel):
    """The request body. ``None`` means "the server's default" (see :func:`agenttuning.serve.create_app`).

    Ranges follow OpenAI's API where it states them (temperature, top_p, penalties, logit_bias, top_logprobs) and
    what the backends can take elsewhere (seed, max_tokens); fields we cannot honour are still range-checked, so a
    malformed value is named as such rather than called "not supported".
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_MAX)
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # refused unless left at their defaults (see unsupported())
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenId, Bias] | None = Field(default=None, max_length=1024)

    @field_validator("stop")
    @classmethod
    def _stop_is_text(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else v or []:
            _valid_text(s)
        return v

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
        try:
            turns.append(Turn(role="system" if m.role == "developer" else m.role, content=content))
        except ValidationError as e:  # whatever the record type refuses is the request's fault, not a server bug
            problems = "; ".join(err.get("msg", "invalid") for err in e.errors())
            raise APIError(400, f"messages[{i}] is invalid: {problems}", param="messages") from e
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
