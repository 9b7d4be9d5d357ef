"""`zoo serve`: export directories over HTTP (onnxruntime, no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand
from zoo.cli.run import RUN_FLAGS

CURL_EXAMPLE = (
    "curl localhost:8000/v1/models/var/sample -H 'Content-Type: application/json' "
    "-H 'Accept: image/png' -d '{\"classes\": [3], \"n\": 4}' -o grid.png --fail"
)


def register(commands: Any) -> None:
    serving = add_subcommand(
        commands,
        "serve",
        "serve exports over HTTP: a JSON API and a web page (onnxruntime, no torch)",
        "Serve export directories over HTTP (Starlette on uvicorn): GET /v1/models, "
        "POST /v1/models/NAME/sample, GET /healthz, GET /metrics and a web page at /. A model is named by "
        "its export directory's name. What the server bounds and what it leaves to a reverse proxy: SECURITY.md.",
        "examples:\n  zoo serve exports/var\n  zoo serve exports/var exports/quantart --port 8080 --workers 4\n"
        f"  {CURL_EXAMPLE}",
    )
    serving.add_argument("export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR", help="export directories")
    serving.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serving.add_argument("--port", type=int, default=8000, help="port to listen on, 1..65535 (default 8000)")
    serving.add_argument(
        "--workers", type=int, default=2, help="requests sampled at once, sharing the sessions (default 2)"
    )
    serving.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting for a worker; more get 503 (default 32)"
    )
    serving.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help="rows one merged call of several requests may hold (default 0: no merging)",
    )
    serving.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="with --max-batch, how long a group waits for requests already arriving (default 10; a lone request runs at once)",
    )
    serving.add_argument(
        "--max-upload-mb", type=float, default=16, help="largest request body, uploaded images included (default 16)"
    )
    serving.add_argument(
        "--max-request-mb",
        type=float,
        default=None,
        help="a request's estimated peak memory; more gets 413 (default: half the machine's memory / --workers)",
    )
    serving.add_argument(
        "--max-image-side", type=int, default=16_384, help="pixels on either side of an uploaded image (default 16384)"
    )
    serving.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="seconds a request may sample; past it, 504 at its next graph call (default: no limit)",
    )
    for flag, default, what in (
        ("--header-timeout", 10, "for a request's headers to arrive before the connection is closed"),
        ("--body-timeout", 30, "for a request's body to arrive before 408"),
        ("--keep-alive-timeout", 5, "an idle keep-alive connection stays open"),
        ("--shutdown-timeout", 30, "a shutdown waits for requests in progress before dropping them"),
    ):
        serving.add_argument(flag, type=float, default=default, help=f"seconds {what} (default {default})")
    serving.add_argument(
        "--max-connections", type=int, default=512, help="open connections; more are closed at once (default 512)"
    )
    serving.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients may use (repeat; default: the --host address, localhost, 127.0.0.1, [::1])",
    )
    serving.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a web page origin (https://app.example) whose scripts may call the API besides the server's own page",
    )
    serving.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="a file holding a token every API call must send as `Authorization: Bearer TOKEN`",
    )
    for flag, spec in RUN_FLAGS.items():
        if flag == "--threads":  # the workers share the cores
            spec = {
                **spec,
                "help": "onnxruntime intra-op threads per session (default: the CPUs this process may use / --workers)",
            }
        serving.add_argument(flag, **spec)
    serving.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from zoo.errors import ConfigError
    from zoo.runtime.serve import ServeSettings, serve

    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--token-file {args.token_file}: cannot be read ({error.__class__.__name__})") from None
    for flag, megabytes in (("--max-upload-mb", args.max_upload_mb), ("--max-request-mb", args.max_request_mb)):
        if megabytes is not None and not 0 < megabytes <= 1024**2:  # also refuses nan and inf
            raise ConfigError(f"{flag} must be over 0 and at most 1048576, got {megabytes}")
    settings = ServeSettings(
        export_dirs=args.export_dirs,
        provider=args.provider,
        threads=args.threads,
        verify_key=args.verify,
        workers=args.workers,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=round(args.max_upload_mb * 1024 * 1024),
        max_request_bytes=None if args.max_request_mb is None else round(args.max_request_mb * 1024 * 1024),
        max_image_side=args.max_image_side,
        request_timeout=args.request_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        shutdown_timeout=args.shutdown_timeout,
        max_connections=args.max_connections,
        host=args.host,
        port=args.port,
        allowed_hosts=tuple(args.allowed_host),
        allowed_origins=tuple(args.allowed_origin),
        token=token,
    )
    serve(settings)
