"""The Starlette app: routes, the thread pool that samples, and errors as one JSON line.

Sampling is CPU-bound and synchronous, so it runs off the event loop in worker threads,
at most `settings.workers` at once (an anyio CapacityLimiter); at most `settings.max_queue`
more wait for a free worker, and further ones are refused with 503 at once: a burst must not
pile up requests whose clients gave up long before a worker reaches them. onnxruntime sessions are safe to run from several threads, and each
request's loop keeps its state (generator, caches) to itself.

Requests are sampled one by one, never batched together: a loop draws a whole batch from
one generator seeded by its options, so rows of a joint batch would not be what each
request's own seed gives.

Every error a client can cause is a 4xx with `{"error": "one line"}`; anything else is a
500 of the same form (uvicorn logs its traceback), and the server goes on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from zoo.errors import ConfigError, ExportError, UnknownNameError, ZooError, first_line
from zoo.runtime.serve.inputs import RequestError, sample_options
from zoo.runtime.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics, MetricsMiddleware
from zoo.runtime.serve.models import ServedModel
from zoo.runtime.serve.outputs import output_json, output_png
from zoo.runtime.serve.page import page_html
from zoo.runtime.serve.settings import ServeSettings


def create_app(models: dict[str, ServedModel], settings: ServeSettings) -> Starlette:
    metrics = Metrics()
    listing = {"models": [model.summary() for model in models.values()]}  # computed once: the exports are fixed
    page = page_html()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.limiter = anyio.CapacityLimiter(settings.workers)  # made on the server's event loop
        app.state.admitted = 0  # sampling or waiting; changed on the event loop only, so no lock
        yield

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def list_models(request: Request) -> Response:
        return JSONResponse(listing)

    async def sample(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in models:
            raise RequestError(404, str(UnknownNameError("model", name, models)))
        model = models[name]
        as_png = wants_png(request)
        options = await sample_options(request, model, settings.max_upload_bytes)
        state = request.app.state
        if state.admitted >= settings.workers + settings.max_queue:
            raise RequestError(503, f"server busy: {state.admitted} requests sampling or waiting; retry later")
        state.admitted += 1
        start = time.perf_counter()
        try:
            output = await anyio.to_thread.run_sync(model.loaded.sample, options, limiter=state.limiter)
        finally:
            state.admitted -= 1
        seconds = time.perf_counter() - start
        metrics.sampling.labels(name).observe(seconds)
        if not as_png:
            return JSONResponse(output_json(output, seconds))
        if output.images is None or len(output.images) == 0:
            raise RequestError(406, "this request made texts, no image: ask for JSON")
        return Response(output_png(output), media_type="image/png", headers={"X-Zoo-Seconds": f"{seconds:.4f}"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(models)})

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/v1/models", list_models),
        Route("/v1/models/{name}/sample", sample, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics_text),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics, routes=routes)],
        exception_handlers={
            RequestError: request_error,
            ZooError: zoo_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )


def wants_png(request: Request) -> bool:
    """`?format=png|json` decides; without it, an Accept header naming image/png does."""
    chosen = request.query_params.get("format")
    if chosen is None:
        return "image/png" in request.headers.get("accept", "")
    if chosen not in ("png", "json"):
        raise RequestError(400, f"format must be png or json, got {chosen!r}")
    return chosen == "png"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error(exc.status, exc.message)


async def zoo_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ConfigError):
        status = 422  # options pydantic refused, or a loop found out of range
    elif isinstance(exc, ExportError):
        status = 500  # a served export failed: the server's fault, not the client's
    else:
        status = 400  # DataError (an unreadable upload), a loop's other input errors, a graph the export lacks
    return error(status, str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail)


async def server_error(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error: {first_line(exc, with_type=True)}")
