"""The wire contract: what the socket layer gives a :class:`~wsroute.connection.Connection`.

:mod:`wsroute.transport` opens a :class:`Transport` (its socket's protocol is the
frame reader, :mod:`wsroute.reader`), hands data messages to the connection's
reader through an :class:`Inbox` — the one place where a message enters — and
reports failures to connect with the exceptions here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from .config import ConnectionSection
from .exceptions import WsrouteError

__all__ = [
    "HIGH_WATER",
    "HIGH_WATER_BYTES",
    "MAX_FRAGMENTS",
    "READ_SIZE",
    "YIELD_EVERY",
    "BadURL",
    "Data",
    "FrameHandler",
    "HandshakeFailed",
    "HandshakeRejected",
    "Inbox",
    "Opener",
    "ProxyFailed",
    "Reading",
    "RedirectRefused",
    "Transport",
]

Data = bytes | str
#: Called by :meth:`Transport.read` with the data frames of a socket read (or part of
#: one), in order; a returned awaitable is awaited before the next frames are handed
#: over (backpressure).
FrameHandler = Callable[[list[Data]], Awaitable[None] | None]

# Messages waiting for the reader above which the socket is not read...
HIGH_WATER = 64
# ... or bytes (frame lengths; characters for text), whichever is reached first: 64
# messages of 4 KiB are already 256 KiB, and a read parsed at once may hold many more.
HIGH_WATER_BYTES = 256 * 1024
#: Bytes one socket read takes (asyncio's own is 256 KiB), on every event loop: the
#: frame reader's buffer (:meth:`wsroute.reader.FrameReader.get_buffer`). A read's
#: frames are handled in one go with nothing else running: 16 KiB is ~180 small
#: frames, a fraction of a millisecond, so a handler's timer (a slow handler's sleep)
#: is not held up by the flood being split; it costs nothing measurable in frames/s
#: (bench/README.md). With permessage-deflate it also bounds what one read inflates.
READ_SIZE = 16 * 1024
# Messages handed to the reader between two explicit yields to the event loop.
# Measured: 64 costs less CPU per frame than 16, 128 or never.
# The yield is asyncio.sleep(0), not anyio's checkpoint(), here and in the handler
# workers: the daemon runs on asyncio only, and checkpoint() looks the backend up
# on every call (3% of the CPU on small frames).
YIELD_EVERY = 64
# ... or about READ_SIZE bytes of them, whichever is fewer: on large frames 64 take
# milliseconds, and a handler's timer (a slow handler's sleep) would wait that long.
#: Frames one fragmented message may have (websockets' own receive loop has the same
#: limit): more fail the connection with 1009. Without it, empty continuation frames
#: would grow a message's list of parts without growing its size.
MAX_FRAGMENTS = 4096


class HandshakeFailed(WsrouteError):
    """The server answered, but not with a WebSocket upgrade we can use."""


class HandshakeRejected(HandshakeFailed):
    """The server refused the upgrade with an HTTP status (401, 429, 503...)."""

    def __init__(self, status: int, headers: Mapping[str, str] | None) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status}")
        self.status = status
        self.headers = headers


class RedirectRefused(HandshakeFailed):
    """The server answered with a redirect the connection's ``redirects`` key does not allow."""


class ProxyFailed(HandshakeFailed):
    """The proxy refused the tunnel, or did not speak its protocol."""


class BadURL(WsrouteError):
    """The URL cannot be connected to (no host, bad port...)."""


class Reading(Protocol):
    """What the :class:`Inbox` switches off and on: the socket's reading."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Transport(Protocol):
    """One open WebSocket.

    Sending, pinging and reading raise ``ConnectionClosed`` (or, for
    :meth:`read`, return) once the connection is gone.
    """

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        ...

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """The socket's asyncio transport (its write buffer size, for the websocket sink)."""
        ...

    async def read(self, handle: FrameHandler) -> None:
        """Hand every data frame to ``handle`` until the connection ends."""
        ...

    async def send(self, data: Data) -> None:
        """Send one frame: ``str`` as text, ``bytes`` as binary."""
        ...

    async def ping(self) -> Awaitable[object]:
        """Send a ping now; the returned awaitable completes when its pong arrives."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, wait ``close_timeout`` at most for the peer's, then abort."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection now: no close handshake (a silent or hostile peer)."""
        ...

    def close_details(self) -> tuple[int | None, str | None]:
        """The close code and reason to report once the connection is gone."""
        ...


class Inbox:
    """Whole messages on their way from the socket's callback to the connection's reader.

    The socket's callback gives it a read's messages together (:meth:`push_many`;
    :meth:`push` for one). While the reader waits with nothing in hand, the
    callback hands them straight to the reader's handler, as one list
    (:meth:`take_many`): at moderate rates a frame then costs one task switch
    (to the handler's worker), not two. Otherwise — the reader is busy, or it
    was given :data:`YIELD_EVERY` messages since it last ran — they are
    appended to :attr:`messages` (:meth:`pause` above :data:`HIGH_WATER`,
    wake :attr:`waiter`); :meth:`drain` hands them to the handler in lists of
    at most :data:`YIELD_EVERY`, letting the loop run between two, resumes
    the socket once everything waiting was handed over, and sleeps until the
    next push. One task switch per socket read, not per frame, under a flood.
    """

    __slots__ = ("handle", "inline", "messages", "paused", "pending", "size", "socket", "waiter")

    def __init__(self) -> None:
        self.messages: deque[Data] = deque()
        #: The length of every message in :attr:`messages` together (bytes, or
        #: characters of text): the byte side of the high-water mark.
        self.size = 0
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False  # socket not read: too many messages wait
        #: The socket's reading, paused and resumed; set once connected.
        self.socket: Reading | None = None
        #: The reader's handler, set by :meth:`drain`.
        self.handle: FrameHandler = _no_reader
        #: Messages the callback may still hand to :attr:`handle` itself. Above zero
        #: only while the reader waits with nothing in hand (so nothing waits in
        #: :attr:`messages` either, and order holds); zeroed by every wake-up.
        self.inline = 0
        #: What the handler returned for a message given by :meth:`take`: the
        #: reader awaits it before anything else (backpressure, a dead letter).
        self.pending: Awaitable[None] | None = None

    def take(self, data: Data) -> None:
        """Hand one message to the reader's handler now; only while :attr:`inline`."""
        self.take_many([data])

    def take_many(self, batch: list[Data]) -> None:
        """Hand messages to the reader's handler now; at most :attr:`inline` of them."""
        self.inline -= len(batch)
        try:
            pending = self.handle(batch)
        except Exception as exc:  # a bug: the reader raises it, as if it had called
            pending = _reraise(exc)
        if pending is not None:
            self.pending = pending
            self.wake()

    def push(self, data: Data) -> None:
        if self.inline:
            self.take_many([data])
            return
        messages = self.messages
        messages.append(data)
        self.size += len(data)
        if (len(messages) > HIGH_WATER or self.size > HIGH_WATER_BYTES) and not self.paused:
            self.pause()
        self.wake()

    def push_many(self, batch: list[Data]) -> None:
        """:meth:`push` for each of ``batch`` (a socket read's messages, in order)."""
        inline = self.inline
        if inline:
            if len(batch) <= inline:
                self.take_many(batch)
                return
            self.take_many(batch[:inline])
            batch = batch[inline:]
        messages = self.messages
        messages.extend(batch)
        self.size += sum(map(len, batch))
        if (len(messages) > HIGH_WATER or self.size > HIGH_WATER_BYTES) and not self.paused:
            self.pause()
        self.wake()

    def pause(self) -> None:
        """Stop reading the socket until :meth:`drain` caught up (or :meth:`resume`)."""
        if not self.paused and self.socket is not None:
            self.paused = True
            self.socket.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.socket is not None:
                self.socket.resume_reading()

    def wake(self) -> None:
        self.inline = 0
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def discard(self) -> None:
        """The reader is gone (closing): drop what waits, and read the socket again —
        the peer's reply to our close frame must get through."""
        self.inline = 0
        self.messages.clear()
        self.size = 0
        self.resume()

    async def drain(self, handle: FrameHandler, finished: Callable[[], bool]) -> None:
        """Hand every message to ``handle``, in order, until ``finished()`` once all
        waiting ones are handed over. The per-frame path: keep it lean."""
        self.handle = handle
        messages = self.messages
        loop = asyncio.get_running_loop()
        since_yield = 0
        while True:
            pending = self.pending
            if pending is not None:
                self.pending = None
                await pending
            while messages:
                # A callback appends a whole socket read at once: against a flooding
                # upstream this loop would never let the handlers' workers run. So
                # the handler gets YIELD_EVERY messages at most, in one call, and
                # the loop runs between two such calls.
                if since_yield:
                    await asyncio.sleep(0)
                waiting = len(messages)
                count = min(YIELD_EVERY, max(1, waiting * READ_SIZE // max(1, self.size)))
                if waiting <= count:
                    batch = list(messages)
                    messages.clear()
                else:
                    popleft = messages.popleft
                    batch = [popleft() for _ in range(count)]
                self.size -= sum(map(len, batch))
                since_yield = 1
                pending = handle(batch)
                if pending is not None:
                    await pending
            self.size = 0  # nothing waits (a message's length cannot change, but be exact)
            self.resume()
            if finished():
                return
            self.waiter = waiter = loop.create_future()
            self.inline = YIELD_EVERY
            try:
                await waiter
                since_yield = 0
            except BaseException:
                # Stopped while a frame already read was handed over (the callback ran
                # before this task saw its cancellation) with something to await:
                # await it. The reader runs in an anyio cancel scope, which cancels
                # the wait again, and a wait for queue room that is cancelled
                # dead-letters its message instead of forgetting it.
                pending = self.pending
                if pending is not None:
                    self.pending = None
                    await pending
                raise
            finally:
                self.waiter = None
                self.inline = 0


def _no_reader(batch: list[Data]) -> None:
    raise RuntimeError("Inbox.take() without a reader")  # pragma: no cover


async def _reraise(exc: Exception) -> None:
    raise exc


class Opener(Protocol):
    """A connect: the handshake with ``url`` (no user info) and ``headers``."""

    async def __call__(
        self,
        section: ConnectionSection,
        context: ssl.SSLContext | None,
        url: str,
        headers: list[tuple[str, str]],
    ) -> Transport: ...
