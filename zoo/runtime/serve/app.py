"""The Starlette app: routes, the thread pool that samples, and errors as one JSON line.

A sample request goes through, in order: admission (at most `workers + max_queue` requests
are in the server at once, from their first body byte; more get 503 at once, so that bodies
in memory are bounded too), the body read within its deadline, parsing and validation in a
thread (zoo.runtime.serve.inputs), the loop's cost estimate against the request budget
(413 when over, before anything is allocated), then sampling.

Sampling is CPU-bound and synchronous, so it runs off the event loop in worker threads,
at most `settings.workers` at once (an anyio CapacityLimiter); a burst must not pile up
requests whose clients gave up long before a worker reaches them. onnxruntime sessions are
safe to run from several threads, and each request's loop keeps its state (generator,
caches) to itself. With `--request-timeout`, a request still sampling at its deadline stops
at its next graph call (zoo.runtime.loop.sampling_deadline) and is answered with 504; its
worker is free again. With `?stream=1`, a loop that reports progress (VAR) sends the
images after each step as server-sent events, then the result.

Plain requests go through zoo.runtime.serve.batching: with `--max-batch`, requests whose
loop allows it are merged into one loop call; each row draws from its own (seed, row)
stream, so every answer equals the request's alone. A merged call takes one worker and one
deadline. Without it, each request is its own call.

Every error a client can cause is a 4xx with `{"error": "one line"}`; anything else is a
500 of the same form with an `error_id`, logged with its traceback under that id, and the
server goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from zoo.config import SampleOptionsBase
from zoo.errors import ConfigError, ExportError, UnknownNameError, ZooError, first_line
from zoo.outputs import SampleOutput
from zoo.runtime.cost import Cost
from zoo.runtime.loop import ProgressCallback, SamplingTimeout, sampling_deadline, sampling_progress
from zoo.runtime.serve.access import AccessMiddleware
from zoo.runtime.serve.batching import Batcher
from zoo.runtime.serve.inputs import RequestError, parse_request, read_body
from zoo.runtime.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics, MetricsMiddleware
from zoo.runtime.serve.models import ServedModel
from zoo.runtime.serve.outputs import output_json, output_png
from zoo.runtime.serve.page import page_html
from zoo.runtime.serve.settings import ServeSettings

logger = logging.getLogger("zoo.serve")


@dataclass
class Sampled:
    """A request's output, when its (maybe merged) call started and how long it took."""

    output: SampleOutput
    started: float
    seconds: float


def create_app(models: dict[str, ServedModel], settings: ServeSettings) -> Starlette:
    metrics = Metrics()
    listing = {"models": [model.summary() for model in models.values()]}  # computed once: the exports are fixed
    page = page_html()

    budget = settings.request_budget
    stopping = threading.Event()  # set at shutdown, past its deadline: sampling still running stops

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.limiter = anyio.CapacityLimiter(settings.workers)  # made on the server's event loop
        app.state.parsers = anyio.CapacityLimiter(settings.workers + 1)  # parsing and encoding: CPU work, briefer
        app.state.admitted = 0  # in the server, reading to sampling; changed on the event loop only, so no lock
        async with anyio.create_task_group() as tasks:  # merged calls run here
            app.state.batcher = Batcher(
                settings.max_batch, settings.max_wait_ms / 1000, budget, app.state.limiter, tasks, sampled
            )
            yield
            tasks.cancel_scope.cancel()
        # uvicorn has waited --shutdown-timeout and cancelled the requests; their worker threads
        # (which the process waits for) stop at their next graph call
        stopping.set()

    async def index(request: Request) -> Response:
        """The web page: pick a model, set its options, see and download the results. Needs no token."""
        return HTMLResponse(page)

    async def list_models(request: Request) -> Response:
        """200, `{"models": [...]}`: per served export `name` (its directory's name), `model`,
        `zoo_version`, `opset`, `precision`, `components`, `provider`, `image_options`,
        `progress` (true: `?stream=1` works) and `options`, the sample options' JSON schema."""
        return JSONResponse(listing)

    def checked(model: ServedModel, body: bytes, content_type: str) -> SampleOptionsBase:
        """The validated options, refused with 413 when their cost is over the budget."""
        options = parse_request(body, content_type, model, settings.max_image_side)
        cost: Cost | None = model.loaded.runtime.cost(options)
        if cost is not None and cost.peak_bytes > budget:
            raise RequestError(
                413,
                f"this request would take {cost.describe()}, over the server's budget of "
                f"{budget / 1024**2:,.0f} MB a request (--max-request-mb): ask for fewer or smaller images",
            )
        return options

    def sampled(model: ServedModel, requests: list[SampleOptionsBase]) -> list[Sampled]:
        """In a worker thread: each request's output, when sampling started and how long it took
        (requests of one merged call share the call's times)."""
        started = time.perf_counter()
        with sampling_deadline(settings.request_timeout, stopping):
            if len(requests) == 1:
                outputs = [model.loaded.sample(requests[0])]
            else:
                outputs = model.loaded.runtime.sample_batch(requests)
        seconds = time.perf_counter() - started
        return [Sampled(output, started, seconds) for output in outputs]

    def stepped(model: ServedModel, options: SampleOptionsBase, on_step: ProgressCallback) -> Sampled:
        """`sampled`, handing `on_step` the images after each step."""
        with sampling_progress(on_step):
            return sampled(model, [options])[0]

    async def events(model: ServedModel, options: SampleOptionsBase, state: Any) -> AsyncIterator[str]:
        """Server-sent events: `step` (a PNG grid as a data URI) after each step, then `result`
        (the JSON a plain request gets) or `error` (one line). The request leaves the admitted
        count when its last event is out."""
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](max_buffer_size=math.inf)

        def on_step(step: SampleOutput) -> None:  # in the worker thread
            anyio.from_thread.run_sync(send.send_nowait, ("step", step))

        async def work() -> None:
            async with send:
                try:
                    enqueued = time.perf_counter()
                    done = await anyio.to_thread.run_sync(stepped, model, options, on_step, limiter=state.limiter)
                    await send.send(("result", (done, enqueued)))
                except Exception as exc:
                    await send.send(("error", exc))

        try:
            async with anyio.create_task_group() as group, receive:
                group.start_soon(work)
                index = 0
                async for kind, value in receive:
                    if kind == "step":
                        index += 1
                        png = await anyio.to_thread.run_sync(output_png, value, limiter=state.parsers)
                        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                        yield event("step", {"step": index, "image": uri})
                    elif kind == "result":
                        done, enqueued = value
                        metrics.sampling.labels(model.name).observe(done.seconds)
                        content = await anyio.to_thread.run_sync(
                            output_json, done.output, done.seconds, done.started - enqueued, limiter=state.parsers
                        )
                        yield event("result", content)
                    else:
                        yield event("error", event_error(value))
        finally:
            state.admitted -= 1

    async def sample(request: Request) -> Response:
        """Sample from model `name` (see `GET /v1/models`).

        Request: the sample options as a JSON object (`Content-Type: application/json`; an
        image option holds a `data:` URI or base64), or `multipart/form-data` with an
        `options` part (that JSON) and one file part per image option, named after it.
        `?format=png` (or `Accept: image/png`) asks for the grid as one PNG; `?stream=1`
        for server-sent events.

        200, JSON: `images` (base64 PNGs), `texts`, `columns`, `extras` (e.g. `tokens`),
        `omitted_extras` (name -> shape of extras too large to send), `seconds` (sampling),
        `queued_seconds` (waiting for a worker). As PNG: the grid, with `X-Zoo-Seconds` and
        `X-Zoo-Queued-Seconds` headers. Streamed (`text/event-stream`, a loop that reports
        progress): `step` events `{"step": k, "image": "data:image/png;base64,..."}`, then
        `result` (the JSON above) or `error`.

        Errors, each `{"error": "one line"}`: 400 malformed body, or `stream=1` for a loop
        without progress; 404 unknown model; 406 PNG asked of a text-only result; 408 body
        too slow; 413 body over `--max-upload-mb`, image over the pixel limit or request
        over `--max-request-mb`; 415 a body neither JSON nor
        multipart, or an upload that is not an image; 422 options the schema
        refuses; 503 `--workers` + `--max-queue` requests already in; 504 past
        `--request-timeout`; 500 zoo's fault, with an `error_id` the log has."""
        name = request.path_params["name"]
        if name not in models:
            raise RequestError(404, str(UnknownNameError("model", name[:100], models)))
        model = models[name]
        as_png = wants_png(request)
        stream = wants_stream(request)
        if stream and not model.loaded.runtime.reports_progress:
            raise RequestError(400, f"{name} does not report progress ({model.loaded.model}): ask without stream=1")
        state = request.app.state
        if state.admitted >= settings.workers + settings.max_queue:
            raise RequestError(503, f"server busy: {state.admitted} requests in progress; retry later")
        state.admitted += 1
        streaming = False
        try:
            with state.batcher.arrival():  # merged calls may wait for this request meanwhile
                body = await read_body(request, settings.max_upload_bytes, settings.body_timeout)
                content_type = request.headers.get("content-type", "")
                options = await anyio.to_thread.run_sync(checked, model, body, content_type, limiter=state.parsers)
                del body
            if stream:
                streaming = True  # `events` counts the request out
                headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                return StreamingResponse(events(model, options, state), media_type="text/event-stream", headers=headers)
            enqueued = time.perf_counter()
            done = await state.batcher.sample(model, options)
        finally:
            if not streaming:
                state.admitted -= 1
        output, seconds, queued = done.output, done.seconds, done.started - enqueued
        metrics.sampling.labels(name).observe(seconds)
        if not as_png:
            content = await anyio.to_thread.run_sync(output_json, output, seconds, queued, limiter=state.parsers)
            return JSONResponse(content)
        if output.images is None or len(output.images) == 0:
            raise RequestError(406, "this request made texts, no image: ask for JSON")
        headers = {"X-Zoo-Seconds": f"{seconds:.4f}", "X-Zoo-Queued-Seconds": f"{queued:.4f}"}
        grid = await anyio.to_thread.run_sync(output_png, output, limiter=state.parsers)  # PNG encoding: CPU work
        return Response(grid, media_type="image/png", headers=headers)

    async def healthz(request: Request) -> Response:
        """200, `{"status": "ok", "models": [names]}`. Needs no token: a liveness probe."""
        return JSONResponse({"status": "ok", "models": sorted(models)})

    async def metrics_text(request: Request) -> Response:
        """Prometheus text: request counts by route and status, request and sampling latency histograms."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/v1/models", list_models),
        Route("/v1/models/{name}/sample", sample, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics_text),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics, routes=routes),
            Middleware(AccessMiddleware, settings=settings),
        ],
        exception_handlers={
            RequestError: request_error,
            ZooError: zoo_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    return app


def wants_png(request: Request) -> bool:
    """`?format=png|json` decides; without it, an Accept header naming image/png does."""
    chosen = request.query_params.get("format")
    if chosen is None:
        return "image/png" in request.headers.get("accept", "")
    if chosen not in ("png", "json"):
        raise RequestError(400, f"format must be png or json, got {chosen!r}")
    return chosen == "png"


def wants_stream(request: Request) -> bool:
    """`?stream=1`: server-sent events, one per step of the loop, then the result."""
    chosen = request.query_params.get("stream", "0")
    if chosen not in ("0", "1"):
        raise RequestError(400, f"stream must be 0 or 1, got {chosen[:20]!r}")
    return chosen == "1"


def event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_error(exc: Exception) -> dict[str, Any]:
    """An error once the stream has begun (its status already sent): the body a plain request gets."""
    if isinstance(exc, ZooError) and not isinstance(exc, ExportError):
        return {"error": one_line(str(exc))}
    message = str(exc) if isinstance(exc, ExportError) else f"internal error: {first_line(exc, with_type=True)}"
    return json.loads(bytes(server_fault(exc, message).body))


MAX_ERROR_CHARS = 1000  # a message quoting a client's value stays readable


def one_line(message: str) -> str:
    """pydantic lists one refused field a line: joined with "; " into the one line clients get."""
    joined = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    return joined if len(joined) <= MAX_ERROR_CHARS else joined[: MAX_ERROR_CHARS - 3] + "..."


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def server_fault(exc: Exception, message: str) -> JSONResponse:
    """A 500: zoo's fault, not the client's. The log has the traceback under the id the answer carries."""
    error_id = uuid.uuid4().hex[:12]
    logger.error("error %s: %s", error_id, message, exc_info=exc)
    body = {"error": one_line(f"{message} (error id {error_id})"), "error_id": error_id}
    return JSONResponse(body, status_code=500)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error(exc.status, exc.message, exc.headers)


async def zoo_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SamplingTimeout):
        return error(504, str(exc))
    if isinstance(exc, ExportError):
        return server_fault(exc, str(exc))  # a served export failed: the server's fault, not the client's
    # ConfigError: options pydantic refused, or a loop found out of range; DataError (an
    # unreadable upload), a loop's other input errors, a graph the export lacks: 400
    return error(422 if isinstance(exc, ConfigError) else 400, str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    return server_fault(exc, f"internal error: {first_line(exc, with_type=True)}")
