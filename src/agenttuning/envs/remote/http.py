"""The client's HTTP calls to an environment server: bounded in time and size, retried where that is safe.

A remote environment is driven from the rollout engine's worker threads, one blocking call at a time, and what comes
back is input we do not control. So every call here:

- has a deadline (``timeout``, the whole call: connecting, sending, waiting, reading), and the body is read in
  chunks and refused past ``max_response_bytes`` (a server that streams without end cannot fill memory);
- parses with ``json.loads`` only, and sends bodies that are ASCII JSON (``ensure_ascii``), so an action holding
  NUL bytes or lone UTF-16 surrogates (the conformance checker's adversarial actions do) travels unharmed;
- runs on a helper thread, so that :meth:`RemoteHTTP.interrupt` makes a waiting call return at once from any thread
  (closing an httpx client does not wake a thread blocked in ``recv``); the abandoned request still ends by its own
  deadline;
- is retried with exponential backoff and full jitter, as the teacher API's calls are
  (:mod:`agenttuning.policies.openai`), when retrying cannot do harm: a refused or failed connection (nothing was
  sent), HTTP 408, 429 and 5xx (honouring ``Retry-After``; a server that answers 5xx is taken not to have applied
  the call), and, for idempotent calls only (reads, ``/reset``, ``/close``), a timeout, a dropped connection or a
  200 whose body is not JSON. A ``/step`` that timed out or came back garbled is not sent again: the server may have
  applied it, and a second application would corrupt the episode.

Every failure raises :class:`RemoteEnvError` naming the server, the call, the cause and the attempts; the rollout
engine records it as the episode's ``env_error`` and the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})
#: how often a waiting call looks for an interrupt
_POLL_S = 0.02
#: a body larger than this is refused (an observation of the conformance limit, 100k characters, is ~400 kB at most)
MAX_RESPONSE_BYTES = 8 << 20


class RemoteEnvError(RuntimeError):
    """A call to an environment server failed for good (the message names the server, call, cause and attempts)."""


class Interrupted(RemoteEnvError):
    """The call was abandoned by :meth:`RemoteHTTP.interrupt`."""


class _Failed(Exception):
    """One failed attempt, classified."""

    def __init__(self, cause: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause, self.retryable, self.retry_after = cause, retryable, retry_after


class RemoteHTTP:
    """Calls to one server (``base_url``); thread-safe, shared by every instance of a remote definition.

    Args:
        timeout: seconds one attempt may take in all; ``connect_timeout``: for opening the connection.
        max_retries: retries after the first attempt (see the module docstring for which failures are retried).
        backoff_base, backoff_max: full-jitter backoff ``uniform(0, min(max, base * 2**retry))``; ``backoff_max``
            also caps a server's ``Retry-After``.
        max_response_bytes: the largest response body accepted.
    """

    def __init__(self, base_url: str, *, timeout: float = 60.0, connect_timeout: float = 5.0, max_retries: int = 3,
                 backoff_base: float = 0.25, backoff_max: float = 5.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:  # fmt: skip
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self.max_response_bytes = max_response_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            follow_redirects=False,
        )
        #: counters over the object's life: calls, HTTP attempts, retries, calls that failed for good
        self.stats = dict.fromkeys(("calls", "requests", "retries", "failures"), 0)

    def __repr__(self) -> str:
        return f"RemoteHTTP({self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- calls --------------------------------------------------------------------------------------------------
    def get(self, path: str, *, params: dict[str, Any] | None = None, stop: threading.Event | None = None,
            timeout: float | None = None) -> Any:  # fmt: skip
        return self.call("GET", path, params=params, idempotent=True, stop=stop, timeout=timeout)

    def post(self, path: str, body: Any = None, *, idempotent: bool, stop: threading.Event | None = None,
             timeout: float | None = None, retries: int | None = None) -> Any:  # fmt: skip
        return self.call("POST", path, body=body, idempotent=idempotent, stop=stop, timeout=timeout, retries=retries)

    def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
             idempotent: bool, stop: threading.Event | None = None, timeout: float | None = None,
             retries: int | None = None) -> Any:  # fmt: skip
        """The parsed JSON answer of ``method path``; :class:`RemoteEnvError` when it fails for good, and
        :class:`Interrupted` as soon as ``stop`` is set (also between retries)."""
        self.stats["calls"] += 1
        content = None if body is None else json.dumps(body, ensure_ascii=True).encode("ascii")
        limit = self.max_retries if retries is None else retries
        attempts = 0
        while True:
            attempts += 1
            self.stats["requests"] += 1
            try:
                return self._interruptible(method, path, content, params, idempotent, stop, timeout or self.timeout)
            except _Failed as failed:
                if not failed.retryable or attempts > limit:
                    self.stats["failures"] += 1
                    final = "not retried" if not failed.retryable else "retries exhausted"
                    raise RemoteEnvError(f"{method} {self.base_url}{path}: {failed.cause} ({final}; {attempts} "
                                         f"attempt{'s' if attempts != 1 else ''})") from None
                delay = self._delay(attempts - 1, failed.retry_after)
                log.warning("%s %s%s: attempt %d/%d failed (%s); retrying in %.2fs", method, self.base_url, path,
                            attempts, limit + 1, failed.cause, delay)
                self.stats["retries"] += 1
                if stop is not None and stop.wait(delay):
                    raise Interrupted(f"{method} {self.base_url}{path}: interrupted") from None
                if stop is None:
                    time.sleep(delay)

    def _interruptible(self, method: str, path: str, content: bytes | None, params: dict[str, Any] | None,
                       idempotent: bool, stop: threading.Event | None, timeout: float) -> Any:  # fmt: skip
        """One attempt on a helper thread, waited for until it ends or ``stop`` is set."""
        if stop is None:
            return self._attempt(method, path, content, params, idempotent, timeout)
        if stop.is_set():
            raise Interrupted(f"{method} {self.base_url}{path}: interrupted")
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = self._attempt(method, path, content, params, idempotent, timeout)
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name=f"remote-env {path}", daemon=True).start()
        while not done.wait(_POLL_S):
            if stop.is_set():  # interrupt(): abandon the request, which still ends by its own deadline
                raise Interrupted(f"{method} {self.base_url}{path}: interrupted")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _attempt(self, method: str, path: str, content: bytes | None, params: dict[str, Any] | None,
                 idempotent: bool, timeout: float) -> Any:  # fmt: skip
        """One HTTP request, its body read within the deadline and the size limit, parsed as JSON."""
        deadline = time.monotonic() + timeout
        headers = {"content-type": "application/json"} if content is not None else {}
        try:
            with self._client.stream(method, self.base_url + path, content=content, params=params,
                                     headers=headers) as response:  # fmt: skip
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise _Failed(f"the response is over {self.max_response_bytes:,} bytes", retryable=False)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the whole response took too long")
                    chunks.append(chunk)
                body = b"".join(chunks)
        except httpx.ConnectError as e:  # refused, unreachable: nothing was sent
            raise _Failed(f"cannot connect ({e})", retryable=True) from None
        except httpx.ConnectTimeout:
            raise _Failed(f"connecting timed out after {self.connect_timeout:g}s", retryable=True) from None
        except httpx.TimeoutException:
            raise _Failed(f"timed out after {timeout:g}s", retryable=idempotent) from None
        except httpx.TransportError as e:  # reset, dropped mid-response: the server may have acted
            raise _Failed(f"connection lost ({type(e).__name__}: {e})", retryable=idempotent) from None
        status = response.status_code
        if status != 200:
            detail = _error_text(body)
            hint = response.headers.get("x-should-retry", "").lower()  # the server knows best (as OpenAI's)
            retryable = hint == "true" if hint in ("true", "false") else status in RETRYABLE_STATUSES or status >= 500
            raise _Failed(f"HTTP {status}: {detail}", retryable=retryable,
                          retry_after=_retry_after(response.headers) if retryable else None)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise _Failed(f"the body is not JSON: {body[:80]!r}", retryable=idempotent) from None

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2.0 ** min(retry, 64)))


def _error_text(body: bytes) -> str:
    """A server's error message: ``{"error": ...}`` (ours, AgentGym's), ``{"detail": ...}`` (FastAPI's) or the text."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return repr(body[:200])
    if isinstance(data, dict):
        for key in ("error", "detail"):
            if key in data:
                return str(data[key])[:300]
    return str(data)[:300]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None
