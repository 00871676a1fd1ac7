"""The WebSocket client libraries behind a :class:`~wsroute.connection.Connection`.

A connection's ``transport`` key picks one: ``"websockets"`` (the default) or
``"picows"`` (the optional ``fast`` extra: a Cython client whose receive loop
reads small frames many times faster). :func:`open_transport` connects with the
section's URL, headers, subprotocols, proxy, TLS context, ``open_timeout`` and
``max_frame_size``, and returns a :class:`Transport` — the only face of the
socket the connection sees. Everything above it (retry loop, keepalive, idle
watch, on_connect, backpressure) is the same code for both.

Failures to connect come out as the same exceptions for both libraries:
:class:`HandshakeRejected` (an HTTP status other than 101, with the response
headers for ``Retry-After``), :class:`HandshakeFailed` (any other bad upgrade),
:class:`BadURL`, and whatever the socket layer raises (``OSError``,
``TimeoutError``, ``ssl.SSLError``). Once open, a transport reports a closed
connection with websockets' ``ConnectionClosed``, whichever library it wraps.

The websockets implementation is here; the picows one, which has to do more
of RFC 6455 itself, is :mod:`wsroute.transport_picows`, imported only when a
connection asks for it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import anyio
from anyio.lowlevel import checkpoint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from .config import ConnectionSection

__all__ = [
    "BadURL",
    "ConnectionClosed",
    "Data",
    "FrameHandler",
    "HandshakeFailed",
    "HandshakeRejected",
    "Transport",
    "open_transport",
    "picows_available",
]

Data = bytes | str
#: Called by :meth:`Transport.read` with each data frame, in order; a returned
#: awaitable is awaited before the next frame is handed over (backpressure).
FrameHandler = Callable[[Data], Awaitable[None] | None]

# Frames websockets buffers before it stops reading the socket (its high-water mark).
_MAX_QUEUE = 64
# Frames handed to the reader between two explicit yields to the event loop (both
# transports). Measured with picows: 64 costs less CPU per frame than 16, 128 or never.
YIELD_EVERY = 64


class HandshakeFailed(Exception):
    """The server answered, but not with a WebSocket upgrade we can use."""


class HandshakeRejected(HandshakeFailed):
    """The server refused the upgrade with an HTTP status (401, 429, 503...)."""

    def __init__(self, status: int, headers: Mapping[str, str] | None) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status}")
        self.status = status
        self.headers = headers


class BadURL(Exception):
    """The URL cannot be connected to (no host, bad port...)."""


class Transport(Protocol):
    """One open WebSocket, whichever library speaks it.

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


def picows_available() -> bool:
    """Whether ``transport = "picows"`` can be used (the ``fast`` extra is installed)."""
    return importlib.util.find_spec("picows") is not None


async def open_transport(section: ConnectionSection, context: ssl.SSLContext | None) -> Transport:
    """Connect and complete the WebSocket handshake with the section's library.

    Raises :class:`HandshakeRejected`, :class:`HandshakeFailed`, :class:`BadURL`,
    ``OSError``, ``TimeoutError`` (``open_timeout``) or ``ssl.SSLError``.
    """
    if section.transport == "picows":
        if not picows_available():  # config validation normally says so first
            raise HandshakeFailed(
                'transport = "picows" needs the picows package: pip install "wsroute[fast]"'
            )
        from .transport_picows import open_picows

        return await open_picows(section, context)
    return await _open_websockets(section, context)


# -- websockets -----------------------------------------------------------------


async def _open_websockets(
    section: ConnectionSection, context: ssl.SSLContext | None
) -> WebsocketsTransport:
    s = section
    try:
        ws = await connect(
            s.url,
            additional_headers=dict(s.headers) or None,
            subprotocols=list(s.subprotocols) or None,  # type: ignore[arg-type]
            compression="deflate" if s.compression == "deflate" else None,
            proxy=None if s.proxy == "none" else True if s.proxy == "env" else s.proxy,
            ssl=context,
            open_timeout=s.open_timeout or None,
            ping_interval=None,  # the connection's own keepalive
            ping_timeout=None,
            close_timeout=s.close_timeout,
            max_size=s.max_frame_size or None,
            max_queue=_MAX_QUEUE,
        )
    except InvalidStatus as exc:
        raise HandshakeRejected(exc.response.status_code, exc.response.headers) from exc
    except InvalidURI as exc:
        raise BadURL(str(exc)) from exc
    except InvalidHandshake as exc:
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    return WebsocketsTransport(ws, s.close_timeout)


class WebsocketsTransport:
    """A websockets ``ClientConnection``, as a :class:`Transport`."""

    def __init__(self, ws: ClientConnection, close_timeout: float) -> None:
        self.ws = ws
        self.close_timeout = close_timeout

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self.ws.transport

    async def read(self, handle: FrameHandler) -> None:
        # The per-frame path: keep it lean (see bench/README.md).
        since_yield = 0
        try:
            async for data in self.ws:
                # websockets hands out buffered frames without suspending: against a
                # flooding upstream this loop would never let the workers run.
                since_yield += 1
                if since_yield >= YIELD_EVERY:
                    since_yield = 0
                    await checkpoint()
                pending = handle(data)
                if pending is not None:
                    await pending
        except ConnectionClosed:
            pass

    async def send(self, data: Data) -> None:
        await self.ws.send(data)

    async def ping(self) -> Awaitable[object]:
        return await self.ws.ping()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with anyio.move_on_after(self.close_timeout + 0.5):
            await self.ws.close(code, reason)
        self.abort()

    def abort(self) -> None:
        if self.ws.transport is not None:
            self.ws.transport.abort()

    def close_details(self) -> tuple[int | None, str | None]:
        """websockets reports 1006 whenever no close frame came back, and after it
        failed the connection itself it discards the peer's reply. That would hide
        why *we* closed — a frame over ``max_frame_size`` (1009), invalid UTF-8
        (1007), a protocol error (1002) — so those come from the close frame we sent.
        """
        protocol = self.ws.protocol
        sent = protocol.close_sent
        if protocol.close_rcvd is None and sent is not None and sent.code not in (1000, 1001):
            return int(sent.code), sent.reason or None
        code = self.ws.close_code
        return (None if code is None else int(code)), self.ws.close_reason or None
