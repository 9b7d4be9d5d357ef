"""`zoo serve`: export directories over HTTP, torch-free (Starlette on uvicorn).

    zoo serve exports/var exports/quantart --port 8000

    GET  /                           a web page: pick a model, set its options, see the result
    GET  /v1/models                  each model's manifest summary and options (JSON schema)
    POST /v1/models/NAME/sample      options as JSON, or multipart: an `options` JSON part and
                                     one file part per image option; JSON back (base64 PNGs,
                                     texts, extras) or the image grid (`Accept: image/png`)
    GET  /healthz                    200 once the models are loaded
    GET  /metrics                    request counts and latencies, Prometheus text format

The modules, one job each: settings (what the command line sets), models (exports loaded
once and shared), inputs (a request body -> validated options; uploads stay in memory),
outputs (a SampleOutput -> JSON or PNG), metrics (Prometheus), page (the web page),
access (Host, Origin and token checks), connections (header deadline, connection cap),
app (routes, the request budget and errors), server (binding, uvicorn). What the server
bounds and checks, and what it leaves to a reverse proxy: SECURITY.md.
"""

from __future__ import annotations

from zoo.runtime.serve.app import create_app
from zoo.runtime.serve.models import ServedModel, load_models
from zoo.runtime.serve.server import serve
from zoo.runtime.serve.settings import ServeSettings

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_models", "serve"]
