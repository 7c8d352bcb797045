"""The ``openai:MODEL`` policy: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama ...).

AgentTuning (Zeng et al., 2023, section 2.2) collects its trajectories by letting GPT-4 (and GPT-3.5) act in the
environments through the chat API, and evaluates API models the same way (section 3). This policy is that call,
built to survive a long rollout: one shared :class:`openai.AsyncOpenAI` client, and a retry loop owned here
rather than by the SDK (the client is built with ``max_retries=0``), so that what counts as transient, how long to
wait and what ends up in the error are decided in one visible place.

What is retried, with exponential backoff and full jitter, ``uniform(0, min(backoff_max, backoff_base * 2**attempt))``:

- HTTP 408, 409, 429 and 5xx (the statuses the SDK itself treats as transient), waiting ``Retry-After`` /
  ``retry-after-ms`` instead of the jittered delay when the server sends one (capped at ``backoff_max``), and
  obeying an ``x-should-retry: true|false`` header when present;
- timeouts (``timeout`` is the whole request's deadline) and connection errors (refused, reset, dropped);
- invalid 200 responses: a body that is not JSON, no ``choices``, empty ``choices``, a null message content.

Every other status (400, 401, 403, 404, 422 ...) fails at once. Either way the policy raises
:class:`~agenttuning.policies.base.PolicyError` naming the cause and the number of attempts, chained to the last
underlying exception.

Usage: ``Reply.usage`` holds the response's ``prompt_tokens``/``completion_tokens`` (0 when the server sends no
``usage``) and ``requests=1`` -- one *successful* call; failed attempts cost no tokens we can see and are counted
in :attr:`OpenAIPolicy.stats` instead (``calls``, ``requests`` = HTTP attempts, ``retries``, ``failures``, token
totals). ``count_tokens`` keeps the base class's ~4-characters-a-token estimate: the endpoint's tokenizer is not
known here (the server's own ``usage`` is the exact count, after the fact).

Example (against any server; ``tests/openai_server.py`` provides a local fake)::

    policy = OpenAIPolicy("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1", temperature=0.0)
    reply = await policy.act([Turn(role="user", content="Say hi")], task=task)
    reply.text, reply.usage
    await policy.aclose()
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from typing import Any

import openai
from openai import AsyncOpenAI

from agenttuning.policies.base import Policy, PolicyError, Reply
from agenttuning.schema import Task, Turn, Usage, to_openai_messages

log = logging.getLogger(__name__)

#: statuses worth another try (as in the openai SDK's own retry policy); everything else 4xx is final
RETRYABLE_STATUSES = frozenset({408, 409, 429})

#: key sent when neither the argument nor OPENAI_API_KEY gives one: local servers ignore it, the SDK requires one
PLACEHOLDER_API_KEY = "EMPTY"


class _InvalidResponse(Exception):
    """A 200 answer that holds no usable reply (not JSON, no choices, null content)."""


class _Attempt(Exception):
    """One failed attempt, classified: ``cause`` for the error message, whether to retry, a server-set delay."""

    def __init__(self, cause: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause, self.retryable, self.retry_after = cause, retryable, retry_after


class OpenAIPolicy(Policy):
    """Chat-completions policy with its own retry loop; safe to share across many concurrent episodes.

    Args:
        model: the model name sent to the endpoint; the policy's ``name`` is ``openai:{model}``.
        base_url: the API root (e.g. ``http://127.0.0.1:8000/v1``); default ``$OPENAI_BASE_URL``, else OpenAI's.
        api_key: default ``$OPENAI_API_KEY``, else the placeholder ``"EMPTY"`` (vLLM/llama.cpp/Ollama need none).
        temperature, max_tokens, stop, seed: sampling settings sent with every request (``stop``/``seed`` only
            when given, since some servers reject unknown or null fields).
        timeout: seconds one request may take in all before it counts as a (retryable) timeout.
        max_retries: retries after the first attempt, so a persistent fault costs ``max_retries + 1`` requests.
        backoff_base, backoff_max: full-jitter backoff, see the module docstring; ``backoff_max`` also caps
            ``Retry-After``.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stop = list(stop) if stop else None
        self.seed = seed
        #: counters over the policy's life: act() calls, HTTP requests (attempts), retries, act() calls that raised
        #: PolicyError, and token totals of the successful calls
        self.stats: dict[str, int] = dict.fromkeys(
            ("calls", "requests", "retries", "failures", "prompt_tokens", "completion_tokens"), 0
        )
        self._client: AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"

    # -- the client ---------------------------------------------------------------------------------------------
    def _get_client(self) -> AsyncOpenAI:
        """The shared client, made lazily in the running event loop.

        An async HTTP connection pool belongs to the loop that opened its connections; a policy reused under a new
        loop (a second ``asyncio.run``) gets a fresh client rather than sockets bound to a closed loop. The HTTP
        client is the SDK's plain ``DefaultAsyncHttpxClient``, not its default wrapper whose ``__del__`` would try to
        close the dropped client's sockets from the *new* loop and log "Event loop is closed".
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key,
                max_retries=0,
                timeout=self.timeout,
                http_client=openai.DefaultAsyncHttpxClient(timeout=self.timeout),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, loop, self._client, self._client_loop = self._client, self._client_loop, None, None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()

    # -- the call -----------------------------------------------------------------------------------------------
    def _request_kwargs(self, messages: list[Turn]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.stop:
            kwargs["stop"] = self.stop
        if self.seed is not None:
            kwargs["seed"] = self.seed
        return kwargs

    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        """One chat completion for ``messages``, retried as the module docstring says; PolicyError when it fails."""
        self.stats["calls"] += 1
        kwargs = self._request_kwargs(messages)
        client = self._get_client()
        attempts = 0
        while True:
            attempts += 1
            self.stats["requests"] += 1
            try:
                text, usage = await self._attempt(client, kwargs)
            except _Attempt as failed:
                if not failed.retryable or attempts > self.max_retries:
                    self.stats["failures"] += 1
                    final = "not retryable" if not failed.retryable else "retries exhausted"
                    plural = "s" if attempts != 1 else ""
                    raise PolicyError(
                        f"{self.name} (task {task.id}): {failed.cause} ({final}; {attempts} attempt{plural})"
                    ) from failed.__cause__
                delay = self._delay(attempts - 1, failed.retry_after)
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                    self.name, attempts, self.max_retries + 1, failed.cause, delay,
                )  # fmt: skip
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
                continue
            self.stats["prompt_tokens"] += usage.prompt_tokens
            self.stats["completion_tokens"] += usage.completion_tokens
            return Reply(text=text, usage=usage)

    async def _attempt(self, client: AsyncOpenAI, kwargs: dict[str, Any]) -> tuple[str, Usage]:
        """One HTTP request; any failure comes out as an :class:`_Attempt` saying whether to retry."""
        try:
            async with asyncio.timeout(self.timeout):  # the whole request's deadline, not just each socket read
                raw = await client.chat.completions.with_raw_response.create(**kwargs)
                return _parse_completion(raw)
        except (TimeoutError, openai.APITimeoutError) as e:
            raise _Attempt(f"timed out after {self.timeout:g}s", retryable=True) from e
        except openai.APIConnectionError as e:
            detail = f"{type(e.__cause__).__name__}: {e.__cause__}" if e.__cause__ else str(e)
            raise _Attempt(f"connection error ({detail})", retryable=True) from e
        except openai.APIStatusError as e:
            headers = e.response.headers
            raise _Attempt(
                f"HTTP {e.status_code}: {_error_message(e)}",
                retryable=_should_retry(e.status_code, headers),
                retry_after=_retry_after_seconds(headers),
            ) from e
        except (_InvalidResponse, openai.APIResponseValidationError) as e:
            raise _Attempt(f"invalid response: {e}", retryable=True) from e
        except openai.OpenAIError as e:  # anything else the SDK raises (bad settings ...): retrying will not help
            raise _Attempt(f"{type(e).__name__}: {e}", retryable=False) from e

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): the server's Retry-After, else full jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        return backoff_delay(retry, base=self.backoff_base, cap=self.backoff_max)


# ---------------------------------------------------------------------------------------------------------------
# Helpers (pure functions)


def backoff_delay(retry: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**retry))`` (AWS architecture blog)."""
    return random.uniform(0.0, min(cap, base * 2.0 ** min(retry, 64)))


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After`` as seconds or an HTTP date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    value = headers.get("retry-after")
    if value:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _should_retry(status: int, headers: Any) -> bool:
    hint = (headers.get("x-should-retry") or "").lower()
    if hint in ("true", "false"):
        return hint == "true"
    return status in RETRYABLE_STATUSES or status >= 500


def _error_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return str(message)[:300]
    return str(e)[:300]


def _parse_completion(raw: Any) -> tuple[str, Usage]:
    """The reply text and usage out of a raw chat-completions response; :class:`_InvalidResponse` if it has none."""
    try:
        completion = raw.parse()
    except ValueError as e:  # json.JSONDecodeError: a JSON content type with a body that is not JSON
        raise _InvalidResponse(f"body is not JSON ({e}): {raw.text[:80]!r}") from e
    if isinstance(completion, str):  # the SDK hands back the text when the content type is not JSON
        content_type = raw.headers.get("content-type", "?")
        raise _InvalidResponse(f"body is not JSON (content-type {content_type}): {completion[:80]!r}")
    choices = getattr(completion, "choices", None)
    if choices is None:
        raise _InvalidResponse("no choices")
    if not isinstance(choices, list) or not choices:
        raise _InvalidResponse(f"choices is {choices!r:.80}, not a non-empty list")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        why = f"finish_reason={getattr(choices[0], 'finish_reason', None)!r}"
        if getattr(message, "refusal", None):
            why += f", refusal={message.refusal!r:.120}"
        raise _InvalidResponse(f"the first choice has no message content ({why})")
    usage = getattr(completion, "usage", None)
    return content, Usage(
        prompt_tokens=_count(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=_count(getattr(usage, "completion_tokens", 0)),
        requests=1,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
