"""`zoo serve`: load the exports, bind the port, then run the app on uvicorn.

The socket is bound here, before the URL is printed, so that a port in use is one error line
and no false "serving on". uvicorn runs with its h11 protocol extended by the connection
guards of zoo.runtime.serve.connections (a header deadline and a cap on open connections),
its keep-alive idle timeout, and a graceful-shutdown deadline after which requests still
running are cancelled.
"""

from __future__ import annotations

import errno
import socket

import uvicorn

from zoo.errors import ConfigError
from zoo.runtime.serve.app import create_app
from zoo.runtime.serve.connections import guarded_protocol
from zoo.runtime.serve.models import load_models
from zoo.runtime.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; one ConfigError when the address is unusable."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({error})") from None
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        reason = (
            "is in use: stop the other server or pick another --port"
            if error.errno == errno.EADDRINUSE
            else f"({error})"
        )
        raise ConfigError(f"cannot listen on {host}:{port}: the port {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings) -> None:
    """Blocks until interrupted. Exports are loaded (and verified) before the port opens, so a
    broken export is one error line and no server."""
    models = load_models(settings)
    app = create_app(models, settings)
    sock = bind(settings.host, settings.port)
    for name, model in models.items():
        print(f"serving {name} ({model.loaded.model}, {model.loaded.providers['used']}) from {model.loaded.export_dir}")
    print(f"request budget {settings.request_budget / 1024**2:.0f} MB (--max-request-mb)")
    if settings.host_names is None:
        print("accepting any Host header (a wildcard --host): name the server's names with --allowed-host")
    print(f"web page and API on http://{settings.host}:{settings.port}/", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=guarded_protocol(settings.header_timeout, settings.max_connections),
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    uvicorn.Server(config).run(sockets=[sock])
