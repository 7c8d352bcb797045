"""``agenttuning env-serve ENV``: any registered family over HTTP, in AgentGym's environment-server protocol.

Routes (the records are in :mod:`agenttuning.envs.remote.protocol`):

==============================  ================================================================================
``GET /``                       a line naming the served family (AgentGym's servers answer the same route)
``POST /create``                a fresh instance: ``{"id": N}``
``POST /reset``                 ``{"id", "data_idx"}``: the task at that index (train first, then test) ->
                                ``{"id", "observation", "reward", "done", "task_id", "split", "instruction"}``
``POST /step``                  ``{"id", "action"}`` -> ``{"observation", "reward", "done", "terminated",
                                "truncated", "success", "invalid", "info"}``
``GET /observation?id=N``       the instance's last observation, a JSON string
``POST /close``                 ``{"id"}`` -> ``true``, or ``false`` for an id with no instance
``GET /info``                   identity, prompts, turn budget, the splits' index ranges (our extension)
``GET /tasks``                  every task's index, id, split and instruction, without payloads (our extension)
``POST /expert``                ``{"data_idx", "history"}`` -> ``{"reply"}``: the family's expert (our extension)
``POST /wrong_answer``          ``{"data_idx"}`` -> ``{"reply"}`` (our extension)
``GET /stats``                  instance counts and limits
==============================  ================================================================================

Errors have an HTTP status and the body ``{"error": message}``: 400 a malformed request or an index out of range,
404 an unknown instance or route, 413 a body over ``max_body_bytes``, 503 no free instance (retry later), 500 the
environment raised (sent with ``x-should-retry: false``: the same call would fail the same way). Responses are
ASCII JSON, so an observation that echoes a lone surrogate of the agent's action still travels.

Environment work runs on each instance's own thread (:mod:`agenttuning.serve.env_instances`), the expert on
Starlette's thread pool; the event loop only routes. The task list is derived once, at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agenttuning.envs.base import EnvDefinition, StepResult
from agenttuning.serve.env_instances import InstancePool, PoolFull, UnknownInstance
from agenttuning.envs.remote.protocol import (
    PROTOCOL,
    REASON_SLOT,
    CreateResponse,
    EnvInfo,
    ExpertRequest,
    IdRequest,
    IndexRange,
    ReplyResponse,
    ResetRequest,
    ResetResponse,
    StepRequest,
    StepResponse,
    TaskEntry,
    TaskList,
)
from agenttuning.schema import Task
from agenttuning.serve.limits import BodyLimit

log = logging.getLogger(__name__)

__all__ = ["create_env_app", "serve_env"]

#: the default body limit: the conformance checker's adversarial actions reach 1 MB, 6 bytes a character as ASCII
#: JSON at worst
MAX_BODY_BYTES = 16 << 20


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate in an observation cannot break the encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii")


class EnvCallError(Exception):
    """The environment raised inside reset/step/expert: answered 500 with ``x-should-retry: false``."""


class _BodyLimit(BodyLimit):
    async def _reject(self, send: Any, size: int) -> None:
        self.on_reject()
        body = json.dumps({"error": f"the request body is {size:,} bytes, over this server's limit of "
                                    f"{self.max_bytes:,} (env-serve --max-body-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_env_app(definition: EnvDefinition, *, max_instances: int = 64, idle_s: float = 600.0,
                   max_body_bytes: int = MAX_BODY_BYTES, reap_every_s: float | None = None) -> FastAPI:  # fmt: skip
    """An app serving ``definition`` (see the module docstring); its tasks are derived here, before it returns.

    ``max_instances`` bounds the live instances, ``idle_s`` is how long an unused one lives, ``max_body_bytes`` the
    largest request body; ``reap_every_s`` (default ``min(idle_s / 4, 30)``) how often idle instances are looked for.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    tasks: list[Task] = definition.tasks("train") + definition.tasks("test")
    n_train = len(tasks) - len(definition.tasks("test"))
    pool = InstancePool(definition, max_instances=max_instances, idle_s=idle_s)
    errors = {"count": 0}
    info = EnvInfo(
        protocol=PROTOCOL, name=definition.name, version=definition.version, id=definition.id,
        description=definition.description, max_turns=definition.max_turns, held_out=definition.held_out,
        test_sample=definition.test_sample, system_prompt=definition.system_prompt, one_shot=definition.one_shot,
        invalid_action=definition.invalid_action(REASON_SLOT),
        splits={"train": IndexRange(start=0, stop=n_train), "test": IndexRange(start=n_train, stop=len(tasks))},
        unavailable=definition.unavailable_reason(),
    )  # fmt: skip
    listing = TaskList(tasks=[TaskEntry(data_idx=i, id=t.id, split=t.split, instruction=t.instruction)
                              for i, t in enumerate(tasks)]).model_dump()  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        every = reap_every_s if reap_every_s is not None else min(idle_s / 4, 30.0)

        async def reaper() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await pool.reap()
                except Exception:  # the reaper must outlive one bad close
                    log.exception("reaping idle instances failed")

        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            await pool.close_all()

    app = FastAPI(title="agenttuning env-serve", summary=f"{definition.id} over AgentGym's environment protocol",
                  lifespan=lifespan, default_response_class=AsciiJSON)
    app.state.pool = pool
    app.state.definition = definition
    _install_error_handlers(app, errors)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes, on_reject=lambda: errors.__setitem__(
        "count", errors["count"] + 1))

    def task_at(data_idx: int) -> Task:
        if not 0 <= data_idx < len(tasks):
            raise _BadRequest(f"data_idx {data_idx} is out of range: this server has {len(tasks)} tasks (train "
                              f"0-{n_train - 1}, test {n_train}-{len(tasks) - 1})")
        return tasks[data_idx]

    @app.get("/")
    async def hello() -> str:
        return f"This is agenttuning environment {definition.id}."

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info.model_dump()

    @app.get("/tasks")
    async def get_tasks() -> dict[str, Any]:
        return listing

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"instances": len(pool), "max_instances": pool.max_instances, "idle_s": pool.idle_s,
                **pool.counters, "errors": errors["count"]}

    @app.post("/create")
    async def create() -> dict[str, Any]:
        inst = await pool.create()
        return CreateResponse(id=inst.iid).model_dump()

    @app.post("/reset")
    async def reset(body: ResetRequest) -> dict[str, Any]:
        inst, task = pool.get(body.id), task_at(body.data_idx)
        env = inst.env
        assert env is not None
        observation = await inst.run(_env_call, env.reset, task)
        inst.observation, inst.task_id = observation, task.id
        return ResetResponse(id=inst.iid, observation=observation, task_id=task.id, split=task.split,
                             instruction=task.instruction).model_dump()  # fmt: skip

    @app.post("/step")
    async def step(body: StepRequest) -> dict[str, Any]:
        inst = pool.get(body.id)
        env = inst.env
        assert env is not None
        result: StepResult = await inst.run(_env_call, env.step, body.action)
        inst.observation = result.observation
        return StepResponse(observation=result.observation, reward=result.reward,
                            done=result.terminated or result.truncated, terminated=result.terminated,
                            truncated=result.truncated, success=result.success, invalid=result.invalid,
                            info=_json_safe(result.info)).model_dump()  # fmt: skip

    @app.get("/observation")
    async def observation(id: int) -> str:  # noqa: A002 - AgentGym's query parameter
        return pool.get(id).observation

    @app.post("/close")
    async def close(body: IdRequest) -> bool:
        return await pool.close(body.id)

    @app.post("/expert")
    async def expert(body: ExpertRequest) -> dict[str, Any]:
        task = task_at(body.data_idx)
        reply = await run_in_threadpool(_env_call, definition.expert, task, list(body.history))
        return ReplyResponse(reply=reply).model_dump()

    @app.post("/wrong_answer")
    async def wrong_answer(body: ExpertRequest) -> dict[str, Any]:
        task = task_at(body.data_idx)
        return ReplyResponse(reply=await run_in_threadpool(_env_call, definition.wrong_answer, task)).model_dump()

    return app


class _BadRequest(Exception):
    pass


def _env_call(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, its exception (the environment's) wrapped so the handler answers 500 not-to-be-retried."""
    try:
        return fn(*args)
    except Exception as e:
        raise EnvCallError(f"{type(e).__name__}: {e}") from e


def _json_safe(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as JSON would carry it (anything not JSON becomes its ``str``)."""
    return json.loads(json.dumps(info, default=str))


def _install_error_handlers(app: FastAPI, errors: dict[str, int]) -> None:
    def respond(status: int, message: str, headers: dict[str, str] | None = None) -> AsciiJSON:
        errors["count"] += 1
        return AsciiJSON({"error": message[:2000]}, status_code=status, headers=headers)

    @app.exception_handler(UnknownInstance)
    async def unknown(request: Request, e: UnknownInstance) -> AsciiJSON:
        return respond(404, str(e.args[0]) if e.args else "unknown instance")

    @app.exception_handler(PoolFull)
    async def full(request: Request, e: PoolFull) -> AsciiJSON:
        return respond(503, str(e), {"retry-after": "1"})

    @app.exception_handler(_BadRequest)
    async def bad(request: Request, e: _BadRequest) -> AsciiJSON:
        return respond(400, str(e))

    @app.exception_handler(EnvCallError)
    async def env_failed(request: Request, e: EnvCallError) -> AsciiJSON:
        log.warning("%s %s: the environment raised %s", request.method, request.url.path, e)
        return respond(500, f"the environment raised {e}", {"x-should-retry": "false"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> AsciiJSON:
        problems = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: "
                    f"{err.get('msg', 'invalid')}" for err in e.errors()[:5]]
        return respond(400, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> AsciiJSON:
        message = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return respond(e.status_code, message)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> AsciiJSON:
        log.exception("%s %s failed", request.method, request.url.path)
        return respond(500, f"internal error: {type(e).__name__}: {e}")


def serve_env(env: str, host: str = "127.0.0.1", port: int = 8100, *, log_level: str = "info",
              **options: Any) -> None:  # fmt: skip
    """Serve the registered family ``env`` with uvicorn until interrupted; ``options`` go to :func:`create_env_app`.

    One process, one worker: the instances live in this process's memory."""
    import uvicorn

    from agenttuning.envs.base import get

    if env.startswith("remote:"):
        raise ValueError("env-serve serves a family of this machine, not a remote: name")
    definition = get(env)
    app = create_env_app(definition, **options)
    log.info("serving %s on http://%s:%d", definition.id, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
