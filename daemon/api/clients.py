"""The API's clients: every connection a listener accepted can be cut off, whatever it does.

Invariants: a listener's :class:`Clients` holds every connection it accepted
and that is not closed yet — one still sending its request, one being
answered, a ``/tap`` — so nothing an API client does (stop reading, never
finish its request) can hold the daemon: a write that cannot progress within
:data:`WRITE_TIMEOUT` drops its client, and :meth:`Clients.close` returns
within its grace (plus the moment an aborted socket takes to go), cutting off
whoever has not closed by then. At a stop the grace is :func:`stop_grace`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from websockets.asyncio.server import Server, ServerConnection

__all__ = ["MAX_GRACE", "WRITE_TIMEOUT", "ApiConnection", "Clients", "stop_grace"]

log = structlog.get_logger("wsroute.api")

#: Seconds a client has to send its whole request, and every write to a client
#: (an answer, a tap record) to get out of the daemon's buffer; then it is dropped.
WRITE_TIMEOUT = 5.0

#: The longest grace the API's clients get to close at a stop or a reload.
MAX_GRACE = 1.0

#: Once cut off, the handlers of a listener finish at the next turns of the loop;
#: this only bounds a wait that must not be unbounded.
_AFTER_ABORT = 0.5


def stop_grace(shutdown_timeout: float) -> float:
    """The API's share of ``shutdown_timeout``: a tenth of it, at most :data:`MAX_GRACE`.

    At a stop the API closes after the drain (``/metrics`` shows the drain to its
    end) and its clients get this long to close before they are cut off.
    """
    return max(0.0, min(MAX_GRACE, shutdown_timeout / 10))


class ApiConnection(ServerConnection):
    """websockets' server connection that a listener can cut off (its socket aborted).

    Given to ``serve()`` as ``create_connection``, one subclass per listener
    (:meth:`Clients.connection_class`), so each listener knows its own clients.
    """

    clients: Clients

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._socket = transport
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.clients.add(self)
        if self.clients.full():
            # Past twice max_clients (a flood of connections that send nothing): not even
            # a 503, which would need the request; up to that, _answer says 503.
            self.cut_off()

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self)
        self._flowing.set()  # a writer waiting for room sees the end, not a timeout
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # asyncio's flow control: the transport's buffer is above its high-water mark.
        self._flowing.clear()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._flowing.set()
        super().resume_writing()

    def write_frames(self, frames: list[bytes]) -> None:
        """Write whole WebSocket frames in one call (the tap's own, encoded once for all)."""
        transport = getattr(self, "_socket", None)
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.writelines(frames)

    async def writable(self) -> None:
        """Return once the socket's buffer is below asyncio's low-water mark again."""
        await self._flowing.wait()

    def cut_off(self) -> None:
        """Abort the socket now: no close frame, nothing more written or read."""
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.abort()


class Clients:
    """One listener's open connections, and its bounded close."""

    def __init__(self, address: str, full: Callable[[], bool] = lambda: False) -> None:
        self.address = address
        self.full = full
        self._open: set[ApiConnection] = set()

    def connection_class(self) -> type[ApiConnection]:
        """An :class:`ApiConnection` subclass whose instances register here."""
        attributes: dict[str, Any] = {"clients": self}
        return type("ApiConnection", (ApiConnection,), attributes)

    def add(self, connection: ApiConnection) -> None:
        self._open.add(connection)

    def discard(self, connection: ApiConnection) -> None:
        self._open.discard(connection)

    def __len__(self) -> int:
        return len(self._open)

    async def close(self, server: Server, grace: float) -> None:
        """Close ``server``: stop accepting, close every client, and return within
        ``grace`` seconds (and the moment aborted sockets take), cutting off the
        clients still connected then."""
        # websockets closes open WebSockets (1001) and answers 503 to a request that
        # completes now; a client that reads nothing or sends nothing does neither.
        server.close()
        with anyio.move_on_after(grace):
            await server.wait_closed()
        if self._open:
            stuck = list(self._open)
            for connection in stuck:
                connection.cut_off()
            log.warning(
                "api_clients_cut_off", address=self.address, clients=len(stuck), grace=grace
            )
        with anyio.move_on_after(_AFTER_ABORT):
            await server.wait_closed()
