"""The two ends of a daemon under test: a scripted upstream and a recording handler.

Invariant: a :class:`ScriptedUpstream` is a real WebSocket server bound to
127.0.0.1 only, and leaving its ``serve()`` never waits on a client (they are
cut off); a :class:`Recorder` keeps every message it handled, in order, and
fails exactly its first ``fail_first`` attempts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..plugin import HandlerContext, Message


class Recorder:
    """A handler that keeps what it receives: ``plugin = "wsroute.testing:Recorder"``.

    Reach the instance with :meth:`Daemon.handler` and look at ``messages``.
    ``fail_first`` makes the first attempts raise, to exercise retries and dead letters.
    """

    @dataclass
    class Options:
        fail_first: int = field(
            default=0, metadata={"doc": "Raise on this many attempts in total, then succeed."}
        )

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.ctx = ctx
        self.messages: list[Message] = []
        self.attempts = 0

    async def handle(self, message: Message) -> None:
        """Record the message (after failing ``fail_first`` attempts)."""
        self.attempts += 1
        if self.attempts <= self.options.fail_first:
            raise RuntimeError(f"{self.ctx.name}: failing attempt {self.attempts} on purpose")
        self.messages.append(message)


class ScriptedUpstream:
    """A real WebSocket server on 127.0.0.1 that sends the frames a test gives it.

    Every client that connects gets ``frames`` in order (``str`` as text
    frames, ``bytes`` as binary). What clients send is kept in ``received``;
    :meth:`send` pushes more frames to every connected client and :meth:`drop`
    cuts them off. ``port`` 0 picks a free one; give a fixed port to stop the
    server and serve again at the same URL (an outage). Use
    :class:`wsroute.demo.ReferenceUpstream` instead for the reference protocol.
    """

    def __init__(self, frames: Sequence[bytes | str] = (), *, port: int = 0) -> None:
        self.frames = list(frames)
        self.port = port
        self.received: list[bytes | str] = []
        self.connections = 0
        self.url = ""
        self._clients: set[ServerConnection] = set()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Run the server; yields its ``ws://127.0.0.1:PORT/`` URL. Leaving stops it."""
        async with serve(self._session, "127.0.0.1", self.port) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/"
            try:
                yield self.url
            finally:
                self.drop()  # do not wait for clients to say goodbye

    def drop(self) -> None:
        """Cut every client off without a close frame, as a network failure would."""
        for ws in list(self._clients):
            if ws.transport is not None:
                ws.transport.abort()

    def stall(self) -> None:
        """Stop reading from the clients connected now, as a hung peer would.

        Their frames and pings pile up unread and no pong goes back; the
        connection stays open until :meth:`drop` (or the client gives up).
        Clients that connect later are read as usual.
        """
        for ws in list(self._clients):
            if ws.transport is not None:
                ws.transport.pause_reading()

    @property
    def connected(self) -> int:
        """How many clients are connected right now."""
        return len(self._clients)

    async def send(self, data: bytes | str) -> None:
        """Send one frame to every connected client."""
        for ws in list(self._clients):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(data)

    async def _session(self, ws: ServerConnection) -> None:
        self.connections += 1
        self._clients.add(ws)
        try:
            for data in self.frames:
                await ws.send(data)
            async for data in ws:
                self.received.append(data)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)


class Upstream(Protocol):
    """What :func:`run_daemon` needs of an upstream: ``serve()`` yielding its URL."""

    def serve(self) -> contextlib.AbstractAsyncContextManager[str]: ...
