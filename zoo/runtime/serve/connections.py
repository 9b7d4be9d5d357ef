"""Connection guards uvicorn lacks: a deadline for a request's headers and a cap on open
connections.

uvicorn times out idle keep-alive connections, but not a client that connects and sends
its headers a byte at a time: thousands of those hold as many sockets for ever. Here a
connection that has not finished a request's headers within `header_timeout` seconds of
connecting (or of its previous response) is closed, and a connection past
`max_connections` is closed as it is accepted. The body's own deadline is the app's
(zoo.runtime.serve.inputs.read_body), which can still answer 408.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the two guards, for `uvicorn.Config(http=...)`."""

    class GuardedH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self.arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm_header_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self.disarm_header_deadline()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            self.arm_header_deadline()  # for the next request on this connection
            super().on_response_complete()
            if self.cycle is not cycle:  # a pipelined request was already waiting
                self.disarm_header_deadline()

        def arm_header_deadline(self) -> None:
            self.disarm_header_deadline()
            self.header_deadline = self.loop.call_later(header_timeout, self.headers_too_slow)

        def disarm_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def headers_too_slow(self) -> None:
            self.header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
