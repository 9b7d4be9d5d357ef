"""Who may call: the Host a request names, the Origin a browser sends, and a bearer token.

- Host: a request must name one of the server's own names (`--allowed-host`; by default the
  bind address, `localhost`, `127.0.0.1` and `[::1]`). A web page on another site that
  re-points its own name at 127.0.0.1 (DNS rebinding) still sends its own name, and is
  refused with 400.
- Origin: a browser names the page a request comes from. Requests from the server's own
  page (same scheme, host and port) and from `--allowed-origin` pass; a cross-site POST from
  any other page is refused with 403 before it reaches a model.
- Token: with `--token-file`, every route but the page (`/`) and `/healthz` needs
  `Authorization: Bearer TOKEN` (401 otherwise); compared in constant time.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from zoo.runtime.serve.settings import ServeSettings, host_name

OPEN_PATHS = ("/", "/healthz")  # no token: the page (which asks for one) and the liveness probe


class AccessMiddleware:
    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.host_names = settings.host_names
        self.origins = frozenset(origin.rstrip("/").lower() for origin in settings.allowed_origins)
        self.token = settings.token.encode() if settings.token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        body = json.dumps({"error": message}).encode()
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        response_headers += [(name.encode(), value.encode()) for name, value in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        host = headers.get("host", "")
        if self.host_names is not None and host_name(host) not in self.host_names:
            shown = host[:100] or "(none)"
            return 400, f"Host {shown!r} is not served here; start zoo serve with --allowed-host NAME to allow it", {}
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin.rstrip("/").lower() not in (own, *self.origins):
                shown = origin[:100]
                return 403, f"requests from the page at {shown!r} are refused; allow it with --allowed-origin", {}
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1"), self.token):
                return (
                    401,
                    "this server needs a token: send Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
        return None
