"""`steerlab serve`: an OpenAI-compatible chat server for a local model with named steering
vectors and conditions.

``POST /v1/chat/completions`` takes OpenAI's chat request (streaming included) plus one extra
field, ``steering``: a list of steering settings as JSON
(:class:`~steerlab.steering.terms.SteeringTerm`) applied together (none by default).
``GET /v1/models`` lists the model, its vectors and conditions, and the allowed multiplier
range. Bad requests get OpenAI's error shape with 400 (naming the field and value), 401 for a
missing or wrong API key, 404 for another model, 429 when the queue is full. All model work runs
on one :class:`~steerlab.serve.worker.GenerationWorker` thread, so one request's steering never
touches another's.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
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

from steerlab.model.catalog import BUILTIN_MODELS
from steerlab.model.handle import ModelHandle
from steerlab.serve.guards import REPORT_POLICY, allowed_hosts, guard
from steerlab.serve.runs import Runs
from steerlab.serve.schema import (
    ChatRequest,
    RequestError,
    ServeSettings,
    SteeringTerm,
    validation_error,
)
from steerlab.serve.worker import (
    Decoding,
    Event,
    GenerationJob,
    GenerationWorker,
    QueueFull,
)
from steerlab.steering.conditions import Condition
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine
    from steerlab.serve.vllm_worker import VllmGenerationWorker

DEFAULT_HOST = "127.0.0.1"
API_KEY_ENV = "STEERLAB_API_KEY"


WEB = Path(__file__).parent / "web"
"""The web interface's files (HTML, JavaScript, CSS; nothing loaded from elsewhere)."""


# ---- the request as work for the worker ---------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: token ids, decoding, steering terms, and what to echo back."""

    prompt_ids: list[int]
    decoding: Decoding
    steering: Composition | None
    steering_key: tuple
    applied: list[dict[str, Any]]


def served_name(spec: str) -> str:
    """The id a server shows for the model it was started with: a built-in or hub name as
    given, a local directory or GGUF file by its own name only (clients never see a path)."""
    path = Path(spec).expanduser()
    if spec in BUILTIN_MODELS or not (path.exists() or spec.startswith((".", "/", "~"))):
        return spec
    return path.stem if path.suffix == ".gguf" else path.resolve().name


def _loaded(loaded: Mapping[str, Any], name: str, kind: str, where: str) -> Any:
    """The vector or condition a term names, or a 400 listing the loaded ones."""
    if name not in loaded:
        names = ", ".join(repr(n) for n in loaded) or "none"
        raise RequestError(f"{where}.{kind}: unknown {kind} {name!r} (loaded: {names})",
                           f"{where}.{kind}", f"unknown_{kind}")
    return loaded[name]


class ChatService:
    """Checks requests against the model, the vectors and the settings, and turns them into jobs."""

    def __init__(
        self, model: ModelHandle, vectors: Mapping[str, SteeringVector], settings: ServeSettings,
        conditions: Mapping[str, Condition] | None = None,
    ) -> None:
        for kind, loaded in (("vector", vectors), ("condition", conditions or {})):
            for name, item in loaded.items():
                try:
                    item.check_compatible(model.model)
                except ValueError as err:
                    raise ValueError(f"{kind} '{name}': {err}") from err
        self.model = model
        self.vectors = dict(vectors)
        self.conditions = dict(conditions or {})
        self.settings = settings
        self.model_name = settings.model_name or served_name(model.name)
        self.context = settings.max_context or model.context

    def describe(self) -> dict[str, Any]:
        """The model entry of ``/v1/models``, with the vectors, the conditions and the allowed
        multiplier range."""
        limit = self.settings.max_multiplier
        vectors = {
            name: {
                "id": v.id,
                "method": v.meta.method,
                "layers": v.layers,
                "norm_ratio": bool(v.meta.residual_norms),
            }
            for name, v in self.vectors.items()
        }
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "steerlab",
            "steering": {
                "vectors": vectors,
                "conditions": {name: {"id": c.id, "layer": c.layer}
                               for name, c in self.conditions.items()},
                "multiplier_range": [-limit, limit],
                "n_layers": self.model.n_layers,
            },
            "max_tokens": self.settings.max_tokens,
            "context": self.context,
            "placement": self.model.placement,
        }

    def prepare(self, request: ChatRequest) -> PreparedRequest:
        """Validate ``request`` beyond its shape; raises :class:`RequestError` naming the field."""
        if request.model != self.model_name:
            raise RequestError(
                f"model {request.model!r} is not served here; this server serves "
                f"{self.model_name!r}",
                "model",
                "model_not_found",
                status=404,
            )
        try:
            prompt = self.model.format_messages(
                [{"role": m.role, "content": m.text()} for m in request.messages]
            )
        except ValueError as err:
            raise RequestError(
                f"messages: {err} (got roles {[m.role for m in request.messages]})", "messages"
            ) from err
        prompt_ids = self.model.encode_prompt(prompt)
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        if len(stop) > 4 or any(not s for s in stop):
            raise RequestError(f"stop: up to 4 non-empty strings, got {list(stop)!r}", "stop")
        temperature = 1.0 if request.temperature is None else request.temperature
        decoding = Decoding(
            self._max_tokens(request, len(prompt_ids)),
            temperature,
            request.top_p or 1.0,
            request.seed,
            stop,
        )
        settings, keys, applied = [], [], []
        for index, term in enumerate(request.steering):
            setting = self._setting(index, term)
            if setting.multiplier != 0:
                settings.append(setting)
                keys.append((term.vector, term.multiplier, tuple(setting.placed()), term.norm_ratio,
                             term.positions, term.intervention, term.condition))
            applied.append({**term.echo(), "layers": sorted(setting.placed()),
                            "vector_id": setting.vector.id})
        # each term was checked on its own in _setting; together they only add up
        steering = Composition(tuple(settings)) if settings else None
        return PreparedRequest(prompt_ids, decoding, steering, tuple(keys), applied)

    def _max_tokens(self, request: ChatRequest, prompt_tokens: int) -> int:
        fields = {
            "max_tokens": request.max_tokens,
            "max_completion_tokens": request.max_completion_tokens,
        }
        given = {k: v for k, v in fields.items() if v is not None}
        if len(set(given.values())) > 1:
            raise RequestError(
                f"max_tokens ({request.max_tokens}) and max_completion_tokens "
                f"({request.max_completion_tokens}) disagree; send one",
                "max_tokens",
            )
        param, wanted = next(iter(given.items()), ("max_tokens", None))
        limit = self.settings.max_tokens
        if wanted is not None and wanted > limit:
            raise RequestError(
                f"{param}: {wanted} is over this server's limit of {limit} tokens",
                param,
                "max_tokens_too_large",
            )
        if self.context is None:
            return wanted or limit
        room = self.context - prompt_tokens
        if room < 1:
            raise RequestError(
                f"messages: the prompt has {prompt_tokens} tokens, which leaves no "
                f"room to answer in the context of {self.context}",
                "messages",
                "context_length_exceeded",
            )
        if wanted is not None and wanted > room:
            raise RequestError(
                f"{param}: the prompt's {prompt_tokens} tokens + {wanted} = "
                f"{prompt_tokens + wanted} tokens, over the context of {self.context}",
                param,
                "context_length_exceeded",
            )
        return wanted or min(limit, room)

    def _setting(self, index: int, term: SteeringTerm) -> SteeringSetting:
        """The request's term as a steering setting, every field checked against what this
        server loaded and allows (a 400 naming the field otherwise)."""
        where = f"steering[{index}]"
        vector = _loaded(self.vectors, term.vector, "vector", where)
        limit = self.settings.max_multiplier
        if term.intervention != "angular" and abs(term.multiplier) > limit:  # angles: ±180
            raise RequestError(
                f"{where}.multiplier: {term.multiplier:g} is outside the allowed range "
                f"[{-limit:g}, {limit:g}]",
                f"{where}.multiplier",
                "multiplier_out_of_range",
            )
        outside = [layer for layer in term.layers or vector.layers
                   if not 0 <= layer < self.model.n_layers]
        if outside:
            raise RequestError(
                f"{where}.layers: {outside} outside the model's layers "
                f"0..{self.model.n_layers - 1}",
                f"{where}.layers",
            )
        condition = None
        if term.condition is not None:
            condition = _loaded(self.conditions, term.condition, "condition", where)
        try:
            setting = term.setting(vector, condition)
            Composition((setting,)).check()
        except ValueError as err:
            raise RequestError(f"{where}: {err}", where) from err
        return setting


# ---- the app ----------------------------------------------------------------------------------


def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Any:
    """An ``emit`` for the worker thread that puts events on ``queue`` inside ``loop``."""

    def emit(event: Event) -> None:
        with suppress(RuntimeError):  # a closed loop: the server is gone, nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return emit


def _sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n"


def _chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _sse({**head, "object": "chat.completion.chunk", "choices": [choice]})


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
        @app.get("/web", include_in_schema=False)
        async def web_root() -> RedirectResponse:
            return RedirectResponse("/web/")

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
            _emitter(asyncio.get_running_loop(), events),
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
                _stream(job, events, head, usage), media_type="text/event-stream"
            )
        collecting = asyncio.ensure_future(_collect(events))
        leaving = asyncio.ensure_future(_disconnected(connection))
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


async def _collect(events: asyncio.Queue) -> tuple[list[str], Event]:
    """A non-streamed completion's text deltas and its last event (an end or an error)."""
    parts: list[str] = []
    while (event := await events.get())[0] == "delta":
        parts.append(event[1])
    return parts, event


async def _disconnected(connection: Request) -> None:
    """Return when the client has gone (its request body was already read)."""
    while (await connection.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    job: GenerationJob, events: asyncio.Queue, head: dict[str, Any], usage: bool
) -> AsyncIterator[str]:
    """The SSE chunks of one streamed completion, ending with ``data: [DONE]``."""
    try:
        yield _chunk(head, {"role": "assistant", "content": ""})
        while (event := await events.get())[0] == "delta":
            yield _chunk(head, {"content": event[1]})
        if event[0] == "error":
            error = {"message": event[1], "type": "server_error", "param": None, "code": None}
            yield _sse({"error": error})
            return
        yield _chunk(head, {}, event[1])
        if usage:
            yield _sse(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": event[2]}
            )
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a client that left stops its row at the next token


def serve(
    model: ModelHandle,
    vectors: Mapping[str, SteeringVector] | None = None,
    settings: ServeSettings | None = None,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    log_level: str = "info",
    conditions: Mapping[str, Condition] | None = None,
    engine: VllmEngine | None = None,
) -> None:
    """Run the server with uvicorn until interrupted (loopback only unless ``host`` says else;
    the Host check answers to ``host``)."""
    import uvicorn

    settings = (settings or ServeSettings()).model_copy(update={"host": host})
    app = create_app(model, vectors, settings, conditions, engine)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serving(
    app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0
) -> Iterator[str]:
    """Run ``app`` on a background thread (port 0: a free one); yield its base URL (``…/v1``).

    For tests, benchmarks and notebooks: the server stops when the block ends.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def run() -> None:
        with suppress(SystemExit):  # uvicorn's way to give up (e.g. a port taken); it logged why
            server.run()

    thread = threading.Thread(target=run, name="steerlab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} (uvicorn logged why)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300.0
) -> Iterator[str]:
    """Run ``steerlab serve ARGS`` in a child process on a free loopback port; yield its base
    URL (``…/v1``) once it answers, and stop it when the block ends.

    For benchmarks and end-to-end tests of the command itself (``args`` must not set
    ``--host`` or ``--port``); its log (stderr) goes to this process's stderr.
    """
    port = free_port()
    command = [sys.executable, "-m", "steerlab.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL
    )
    base_url = f"http://{DEFAULT_HOST}:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(base_url + "/models"):
            if process.poll() is not None:
                raise RuntimeError(
                    f"steerlab serve exited with code {process.returncode} before it answered"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"steerlab serve did not answer on {base_url} within {timeout:g} s"
                )
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(60)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status, 401 included)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
