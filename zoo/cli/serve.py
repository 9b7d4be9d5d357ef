"""`zoo serve`: export directories over HTTP (onnxruntime, no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand
from zoo.cli.run import RUN_FLAGS


def register(commands: Any) -> None:
    serving = add_subcommand(
        commands,
        "serve",
        "serve exports over HTTP: a JSON API and a web page (onnxruntime, no torch)",
        "Serve export directories over HTTP (Starlette on uvicorn): GET /v1/models, "
        "POST /v1/models/NAME/sample, GET /healthz, GET /metrics and a web page at /. A model is named by "
        "its export directory's name.",
        "examples:\n  zoo serve exports/var\n  zoo serve exports/var exports/quantart --port 8080 --workers 4\n"
        '  curl -X POST localhost:8000/v1/models/var/sample -d \'{"classes": [3], "n": 4}\' -o grid.png '
        "-H 'Accept: image/png'",
    )
    serving.add_argument("export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR", help="export directories")
    serving.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serving.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serving.add_argument(
        "--workers", type=int, default=2, help="requests sampled at once, sharing the sessions (default 2)"
    )
    serving.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting for a worker; more get 503 (default 32)"
    )
    serving.add_argument(
        "--max-upload-mb", type=float, default=16, help="largest request body, uploaded images included (default 16)"
    )
    for flag, spec in RUN_FLAGS.items():
        serving.add_argument(flag, **spec)
    serving.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from zoo.runtime.serve import ServeSettings, serve

    settings = ServeSettings(
        export_dirs=args.export_dirs,
        provider=args.provider,
        threads=args.threads,
        verify_key=args.verify,
        workers=args.workers,
        max_queue=args.max_queue,
        max_upload_bytes=round(args.max_upload_mb * 1024 * 1024),
    )
    serve(settings, host=args.host, port=args.port)
