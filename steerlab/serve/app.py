"""`steerlab serve`: an OpenAI-compatible chat server for a local model with named steering
vectors and conditions.

``POST /v1/chat/completions`` takes OpenAI's chat request (streaming included) plus one extra
field, ``steering``: a list of steering settings as JSON
(:class:`~steerlab.steering.terms.SteeringTerm`) applied together (none by default).
``GET /v1/models`` lists the model, its vectors and conditions, and the allowed multiplier
range. Bad requests get OpenAI's error shape with 400 (naming the field and value), 401 for a
missing or wrong API key, 404 for another model, 429 when the queue is full. All model work runs
on one :class:`~steerlab.serve.worker.GenerationWorker` thread, so one request's steering never
touches another's. A request becomes work in :mod:`~steerlab.serve.service`, its reply is sent
by :mod:`~steerlab.serve.streaming`, and :mod:`~steerlab.serve.launch` runs the app.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from steerlab.model.handle import ModelHandle
from steerlab.serve.guards import REPORT_POLICY, allowed_hosts, guard
from steerlab.serve.runs import Runs
from steerlab.serve.schema import (
    ChatRequest,
    RequestError,
    ServeSettings,
    validation_error,
)
from steerlab.serve.service import ChatService
from steerlab.serve.streaming import collect, disconnected, emitter, stream
from steerlab.serve.worker import (
    GenerationJob,
    GenerationWorker,
    QueueFull,
)
from steerlab.steering.conditions import Condition
from steerlab.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine
    from steerlab.serve.vllm_worker import VllmGenerationWorker

WEB = Path(__file__).parent / "web"
"""The web interface's files (HTML, JavaScript, CSS; nothing loaded from elsewhere)."""


# ---- the app ----------------------------------------------------------------------------------


def answer_errors_as_openai(app: FastAPI) -> None:
    """Every refusal, malformed body and HTTP error of ``app`` answered in OpenAI's error shape."""

    @app.exception_handler(RequestError)
    async def refused(request: Any, exc: RequestError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Any, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return RequestError(str(exc.detail), status=exc.status_code).response()


def _runs_routes(app: FastAPI, runs: Runs) -> None:
    """The runs page's API: the list, each report, one item across arms."""

    @app.get("/runs/list")
    async def runs_list() -> dict[str, Any]:
        return {"root": str(runs.root), "runs": runs.listing()}

    @app.get("/runs/{name}/view/", response_class=HTMLResponse)
    async def run_report(name: str) -> HTMLResponse:
        return HTMLResponse(runs.report(name), headers={
            "content-security-policy": REPORT_POLICY, "x-frame-options": "SAMEORIGIN"})

    @app.get("/runs/{name}/item/{item_id}")
    async def run_item(name: str, item_id: str) -> dict[str, Any]:
        records, unreadable = runs.item(name, item_id)
        return {"run": name, "item_id": item_id, "records": records, "unreadable": unreadable}


def create_app(
    model: ModelHandle,
    vectors: Mapping[str, SteeringVector] | None = None,
    settings: ServeSettings | None = None,
    conditions: Mapping[str, Condition] | None = None,
    engine: VllmEngine | None = None,
) -> FastAPI:
    """The server as an ASGI app; its generation worker starts and stops with the app.
    Requests may steer with ``vectors`` and gate their steering on ``conditions`` (by name).
    With a vLLM ``engine`` (on the same model) every request joins its continuous batch
    (conditions are refused there); ``model`` still checks and tokenises requests."""
    settings = settings or ServeSettings()
    if engine is not None and conditions:
        raise ValueError("conditions are not available on the vLLM engine")
    service = ChatService(model, vectors or {}, settings, conditions)
    worker: GenerationWorker | VllmGenerationWorker
    if engine is not None:
        # imported here: this module must load where vLLM is not installed
        from steerlab.serve.vllm_worker import VllmGenerationWorker

        worker = VllmGenerationWorker(engine, model, settings.max_pending)
    else:
        worker = GenerationWorker(
            model, settings.max_batch_size, settings.max_pending, settings.batch_wait_ms / 1000
        )

    # Prompts are formatted and tokenised here, off the event loop (a long one takes seconds),
    # one at a time (a fast tokenizer is not to be shared between threads).
    tokenizing = ThreadPoolExecutor(1, thread_name_prefix="steerlab-tokenize")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            tokenizing.shutdown(cancel_futures=True)

    app = FastAPI(title="steerlab", lifespan=lifespan)
    app.state.service, app.state.worker = service, worker
    hosts, any_ip = allowed_hosts(settings.host, settings.allowed_hosts)
    guard(app, key=settings.api_key, hosts=hosts, any_ip=any_ip,
          max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s)

    answer_errors_as_openai(app)

    if settings.web:
        @app.get("/", include_in_schema=False)
        @app.get("/web", include_in_schema=False)
        async def web_root(request: Request) -> RedirectResponse:
            """The interface's address, for a browser sent to the server's root (its query,
            such as ``?key=``, kept)."""
            query = request.url.query
            return RedirectResponse("/web/" + (f"?{query}" if query else ""))

        app.mount("/web", StaticFiles(directory=WEB, html=True), name="web")
        if settings.runs is not None:
            _runs_routes(app, Runs(settings.runs))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [service.describe()]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: ChatRequest, connection: Request
    ) -> JSONResponse | StreamingResponse:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(tokenizing, service.prepare, request)
        events: asyncio.Queue = asyncio.Queue()
        job = GenerationJob(
            prepared.prompt_ids,
            prepared.decoding,
            emitter(asyncio.get_running_loop(), events),
            prepared.steering,
            prepared.steering_key,
        )
        try:
            worker.submit(job)
        except QueueFull as err:
            raise RequestError(
                str(err), code="queue_full", status=429, kind="rate_limit_error"
            ) from err
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": service.model_name,
        }
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                stream(job, events, head, usage), media_type="text/event-stream"
            )
        collecting = asyncio.ensure_future(collect(events))
        leaving = asyncio.ensure_future(disconnected(connection))
        try:
            await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            job.cancel()  # a client that left: dropped from the queue, or stopped at its next token
            for task in (collecting, leaving):
                task.cancel()
        if not collecting.done() or collecting.cancelled():
            return JSONResponse({"error": {"message": "client closed the request", "type":
                                           "client_closed", "param": None, "code": None}},
                                status_code=499)
        parts, event = collecting.result()
        if event[0] == "error":
            raise RequestError(event[1], status=500, kind="server_error")
        message = {"role": "assistant", "content": "".join(parts)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": event[1]}
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [choice],
                "usage": event[2],
                "steering": prepared.applied,
            }
        )

    return app


