"""The FastAPI app of ``agenttuning serve``: OpenAI's chat-completions endpoints over one local model.

Routes: ``POST /v1/chat/completions`` (``stream`` too), ``GET /v1/models``, ``GET /v1/stats`` (batching counters
and request counts), ``GET /health``. Every error, including FastAPI's validation errors (mapped from 422 to 400
as OpenAI answers them) and unknown routes, comes back as OpenAI's ``{"error": {message, type, param, code}}``.

Sizes are bounded before work is done in proportion to them: the request body (``max_body_bytes``, 413; see
:mod:`agenttuning.serve.limits`), the prompt's characters before it is tokenised (``max_prompt_chars``, 400) and its
tokens after (``max_context_tokens``, 400 ``context_length_exceeded``). Tokenising runs off the event loop (see
:mod:`agenttuning.serve.backends`), so ``/health`` and other requests are answered while a long prompt is encoded.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agenttuning.policies.hf import HFPolicy
from agenttuning.serve.backends import HFBackend, Sampling, VLLMBackend, vllm_available
from agenttuning.serve.limits import BodyLimit
from agenttuning.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    apply_stop,
    completion_body,
    error_body,
    stream_events,
    to_turns,
    unsupported,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = ["create_app", "serve"]

Backend = Literal["auto", "hf", "vllm"]

#: the default request body limit: a 128k-token prompt is well under 1 MB of JSON
MAX_BODY_BYTES = 4 << 20
#: the default prompt limit in characters is this many per token of the model's context: text averages about 4
#: characters per token, so only prompts far too long for the context are refused before being tokenised
CHARS_PER_TOKEN_BOUND = 16


def create_app(
    model: str | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    *,
    served_name: str | None = None,
    backend: Backend = "auto",
    device: str | None = None,
    dtype: str = "auto",
    batch_size: int = 8,
    batch_wait_ms: float = 5.0,
    max_new_tokens_default: int = 512,
    max_context_tokens: int | None = None,
    temperature_default: float = 1.0,
    top_p_default: float = 1.0,
    max_policies: int = 8,
    vllm_options: dict[str, Any] | None = None,
    kv_reuse: bool = True,
    kv_cache_bytes: int | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_prompt_chars: int | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving ``model``; the model is loaded here, before the app is returned.

    Args:
        model: a hub id or local folder, or a loaded ``PreTrainedModel`` (then ``tokenizer`` is needed unless the
            model's ``name_or_path`` has one).
        tokenizer: id/folder or tokenizer object, with a chat template; default: the model's.
        served_name: the model name clients send and ``/v1/models`` lists; default the ``model`` string (as vLLM
            does), or the model object's ``name_or_path``, else ``"local-model"``. Requests naming another model
            get 404.
        backend: ``"hf"`` (HFPolicy), ``"vllm"``, or ``"auto"``: vLLM when it is importable and ``model`` is a
            name/path, else hf.
        device, dtype: where and in what precision the hf backend runs the model (as :class:`HFPolicy`).
        batch_size, batch_wait_ms: the hf backend's batching (most requests per ``generate``; how long to wait
            for more after the first).
        max_new_tokens_default: the reply length when a request gives neither ``max_tokens`` nor
            ``max_completion_tokens``.
        max_context_tokens: prompt + reply limit; default the model's ``max_position_embeddings`` (hf) or
            vLLM's ``max_model_len``. Longer prompts get 400 ``context_length_exceeded``; ``max_tokens`` is capped
            to what still fits.
        temperature_default, top_p_default: used when a request omits them (OpenAI's defaults: 1.0, 1.0; the
            paper's evaluation is greedy, so clients such as OpenAIPolicy send ``temperature`` explicitly).
        max_policies: hf backend: how many per-setting policies stay alive (see :mod:`agenttuning.serve.backends`).
        vllm_options: extra ``vllm.AsyncEngineArgs`` (e.g. ``{"tensor_parallel_size": 2}``).
        kv_reuse, kv_cache_bytes: hf backend: start each prompt from the longest stored KV prefix, within this byte
            budget (see :mod:`agenttuning.policies.hf`); vLLM has its own prefix caching.
        max_body_bytes: the largest request body; a larger one gets 413 without being read.
        max_prompt_chars: the most characters of message content a request may hold (400
            ``context_length_exceeded`` before tokenising); default ``CHARS_PER_TOKEN_BOUND`` per token of the
            context, or ``max_body_bytes`` when the context is unknown.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    if max_prompt_chars is not None and max_prompt_chars < 1:
        raise ValueError("max_prompt_chars must be >= 1")
    if backend == "auto":
        backend = "vllm" if isinstance(model, str) and vllm_available() else "hf"
    engine: HFBackend | VLLMBackend
    if backend == "vllm":
        if not isinstance(model, str):
            raise ValueError("the vllm backend loads the model itself: pass a hub id or folder, not a model object")
        engine = VLLMBackend(
            model, tokenizer, dtype=dtype, max_context_tokens=max_context_tokens, engine_options=vllm_options
        )
    elif backend == "hf":
        template = HFPolicy(
            model, tokenizer=tokenizer, device=device, dtype=dtype, max_new_tokens=max_new_tokens_default,
            batch_size=batch_size, batch_wait_ms=batch_wait_ms, max_context_tokens=max_context_tokens,
            kv_reuse=kv_reuse, kv_cache_bytes=kv_cache_bytes,
        )  # fmt: skip
        engine = HFBackend(template, max_policies=max_policies)
    else:
        raise ValueError(f"unknown backend {backend!r}: use auto, hf or vllm")
    name = served_name or (model if isinstance(model, str) else getattr(model, "name_or_path", "")) or "local-model"
    counters = {"completions": 0, "streams": 0, "errors": 0}
    context = engine.max_context_tokens
    if max_prompt_chars is None:
        max_prompt_chars = CHARS_PER_TOKEN_BOUND * context if context else max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await engine.aclose()

    app = FastAPI(title="agenttuning serve", summary=f"OpenAI-compatible chat completions for {name}", lifespan=lifespan)
    app.state.backend = engine
    app.state.served_name = name
    app.state.counters = counters
    app.state.limits = {"max_body_bytes": max_body_bytes, "max_prompt_chars": max_prompt_chars}
    _install_error_handlers(app, counters)

    def rejected() -> None:  # a 413 sent by the middleware, before the app's error handlers
        counters["errors"] += 1

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, on_reject=rejected)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "backend": engine.kind}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "agenttuning"}]}

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return {"backend": engine.kind, **engine.stats(), "server": dict(counters)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        if req.model != name:
            raise APIError(
                404, f"the model {req.model!r} does not exist: this server serves {name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip
        refused = unsupported(req)
        if refused is not None:
            raise refused
        sampling = Sampling(
            temperature=temperature_default if req.temperature is None else req.temperature,
            top_p=top_p_default if req.top_p is None else req.top_p,
            max_tokens=req.token_limit(max_new_tokens_default),
            seed=req.seed,
            stop=req.stop_sequences(),
        )
        turns = to_turns(req.messages)
        chars = sum(len(t.content) for t in turns)
        if chars > max_prompt_chars:  # refused before tokenising: that work grows with the text, not the tokens
            raise APIError(
                400, f"the messages hold {chars:,} characters, over this server's limit of {max_prompt_chars:,} "
                f"(agenttuning serve --max-prompt-chars)", param="messages", code="context_length_exceeded",
            )  # fmt: skip
        completion = apply_stop(await engine.complete(turns, sampling), sampling.stop)
        counters["completions"] += 1
        if req.stream:
            counters["streams"] += 1
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream_events(completion, model=name, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return completion_body(completion, model=name)

    return app


_MAX_PROBLEMS = 5
#: the names pydantic gives the members of a union in an error's location ("stop.list[constrained-str]"): not
#: fields, so left out of the message
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|constrained-\w+|function-\w+\[.*\]|\w+\[.*\])$")


def _install_error_handlers(app: FastAPI, counters: dict[str, int]) -> None:
    def respond(status: int, body: dict[str, Any]) -> JSONResponse:
        counters["errors"] += 1
        return JSONResponse(body, status_code=status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        if e.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, e.message)
        return respond(e.status, error_body(e.status, e.message, type=e.type, param=e.param, code=e.code))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems, param = [], None
        errors = e.errors()
        for err in errors[:_MAX_PROBLEMS]:  # a request can hold thousands of invalid items: name the first few
            loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
            param = param or (loc[0] if loc else None)
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        if len(errors) > _MAX_PROBLEMS:
            problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
        return respond(400, error_body(400, "invalid request: " + "; ".join(problems), param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return respond(e.status_code, error_body(e.status_code, message, code=getattr(e, "code", None)))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return respond(500, error_body(500, f"internal error: {type(e).__name__}: {e}"))


def serve(
    model: str | PreTrainedModel,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted; ``options`` go to :func:`create_app`.

    One process, one worker: the model lives in this process's memory (batching, not workers, gives throughput).
    """
    import uvicorn

    app = create_app(model, **options)
    log.info("serving %s (%s backend) on http://%s:%d/v1", app.state.served_name, app.state.backend.kind, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
