"""``transport = "picows"``: picows' client behind the :class:`~wsroute.transport.Transport` face.

Imported only when a connection asks for picows (the optional ``fast`` extra).
picows leaves more of RFC 6455 to its user than websockets does, so
:class:`_PicowsListener` does it here: fragmented messages are reassembled
(``max_frame_size`` applies to the whole message: 1009), text is checked to be
UTF-8 (1007), reserved bits and stray continuations are refused (1002), a
peer's close frame is answered, and the subprotocol and extensions of the
server's answer are checked. picows has no permessage-deflate: the config
refuses ``compression = "deflate"`` with it.

Messages are handed from picows' synchronous callback to the reader task
through a deque, as with websockets (see :mod:`wsroute.transport`): no task
switch per frame, and the socket not read while more than ``HIGH_WATER``
messages, or ``HIGH_WATER_BYTES`` bytes, wait. A message may have
``MAX_FRAGMENTS`` fragments at most, as with websockets (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Generator
from typing import Any

import anyio
import picows
from python_socks import ProxyError  # a dependency of picows
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidURI
from websockets.frames import Close
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from .config import ConnectionSection
from .wire import (
    HIGH_WATER,
    HIGH_WATER_BYTES,
    MAX_FRAGMENTS,
    BadURL,
    Data,
    FrameHandler,
    HandshakeFailed,
    HandshakeRejected,
    Inbox,
    Transport,
)

__all__ = ["open_picows"]

# picows logs every connect and disconnect at INFO; the connection logs those itself.
_PICOWS_LOG = logging.getLogger("wsroute.picows")
_PICOWS_LOG.setLevel(logging.WARNING)
# What a picows client cannot be given: no limit is "the largest size".
_NO_LIMIT = 1 << 62
_BINARY = picows.WSMsgType.BINARY
_TEXT = picows.WSMsgType.TEXT


async def open_picows(
    section: ConnectionSection,
    context: ssl.SSLContext | None,
    url: str,
    headers: list[tuple[str, str]],
) -> Transport:
    """Connect to ``url`` (no user info: :func:`~wsroute.transport.open_transport` turned it
    into ``headers``, and follows redirects itself) with picows; the errors are those of
    :func:`~wsroute.transport.open_transport`."""
    s = section
    headers = list(headers)
    offered = list(s.subprotocols)
    if offered:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(offered)))
    proxy = _picows_proxy(s, url)
    max_size = s.max_frame_size or _NO_LIMIT
    holder: list[_PicowsListener] = []

    def listener_factory(
        request: picows.WSUpgradeRequest, response: picows.WSUpgradeResponse
    ) -> _PicowsListener:
        # Called once the 101 response is parsed, before any frame: what
        # websockets checks in the handshake, picows leaves to us.
        chosen = response.headers.get("Sec-WebSocket-Protocol")
        if chosen is not None and chosen not in offered:
            raise HandshakeFailed(f"server chose a subprotocol that was not offered: {chosen}")
        extensions = response.headers.get("Sec-WebSocket-Extensions")
        if extensions:
            raise HandshakeFailed(f"server chose an extension that was not offered: {extensions}")
        listener = _PicowsListener(chosen, max_size, s.close_timeout)
        holder.append(listener)
        return listener

    timeout = s.open_timeout or None
    try:
        # fail_after bounds TCP + TLS + proxy; picows' own handshake timeout drops a
        # socket that was connected when fail_after fired mid-handshake.
        with anyio.fail_after(timeout):
            await picows.ws_connect(
                listener_factory,
                url,
                ssl_context=context,
                websocket_handshake_timeout=timeout,
                logger_name=_PICOWS_LOG,
                enable_auto_ping=False,  # the connection's own keepalive
                enable_auto_pong=True,
                max_frame_size=max_size,
                extra_headers=headers or None,
                proxy=proxy,
                max_redirects=0,  # open_transport follows them, by the redirects key
            )
    except picows.WSInvalidStatusError as exc:
        response = exc.response
        status = int(response.status) if response is not None else 0
        raise HandshakeRejected(status, response.headers if response is not None else None) from exc
    except picows.WSInvalidURL as exc:
        raise BadURL(str(exc)) from exc
    except picows.WSHandshakeError as exc:
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    except ProxyError as exc:
        raise HandshakeFailed(f"proxy: {exc}") from exc
    except BaseException:
        if holder:  # connected, then timed out or cancelled before ws_connect returned
            holder[0].abort()
        raise
    return holder[0]


def _picows_proxy(section: ConnectionSection, url: str) -> str | None:
    """The proxy URL for picows; ``env`` resolved the way websockets does it."""
    if section.proxy == "none":
        return None
    if section.proxy != "env":
        return section.proxy
    try:
        return get_proxy(parse_uri(url))
    except InvalidURI as exc:
        raise BadURL(str(exc)) from exc


# The most one socket read hands picows (what asyncio's selector reads for websockets).
_MAX_READ = 256 * 1024


class _CappedReads(asyncio.BufferedProtocol):
    """picows' protocol, with each socket read capped at ``_MAX_READ`` bytes.

    picows doubles its read buffer, before parsing, whenever a read fills it
    past 90%. Against a flooding upstream every read fills it, so the buffer
    grew with whatever the kernel had queued — and every message parsed from
    one read waits in the reader's deque before the high-water mark can pause
    the socket (measured: 68 MiB peak RSS on 4 KiB frames). Capped, a read is
    as big as the one asyncio gives websockets, and picows' buffer stops
    growing past twice that.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.BufferedProtocol) -> None:
        self._inner = inner

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = memoryview(self._inner.get_buffer(sizehint))
        return buffer[:_MAX_READ] if len(buffer) > _MAX_READ else buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _PongWaiter:
    """Awaitable returned by :meth:`_PicowsListener.ping`; raises ``ConnectionClosed`` on close.

    Not a coroutine: one that is never awaited (the connection went away
    first) must not warn.
    """

    __slots__ = ("_future", "_listener")

    def __init__(self, future: asyncio.Future[bool], listener: _PicowsListener) -> None:
        self._future = future
        self._listener = listener

    def __await__(self) -> Generator[Any, None, None]:
        answered = yield from self._future.__await__()
        if not answered:
            raise self._listener.closed_error()


class _PicowsListener(picows.WSListener):
    """picows' callbacks for one connection, and the :class:`Transport` around them.

    ``on_ws_frame`` runs synchronously inside picows' ``buffer_updated``: it
    only validates, copies the payload and pushes it into the
    :class:`~wsroute.transport.Inbox`, which the reader (:meth:`read`) drains:
    a burst of frames costs one task switch.
    """

    def __init__(self, subprotocol: str | None, max_size: int, close_timeout: float) -> None:
        super().__init__()
        self._subprotocol = subprotocol
        self._max_size = max_size
        self._close_timeout = close_timeout
        self._ws: picows.WSTransport | None = None
        self._inbox = Inbox()
        self._failed = False  # we failed it, or the peer closed: nothing after is a message
        self._parts: list[bytes] | None = None  # the fragments of a message in progress
        self._parts_size = 0
        self._parts_text = False
        self._pings: dict[bytes, asyncio.Future[bool]] = {}
        self._ping_counter = 0
        self._write_ready: asyncio.Future[None] | None = None
        self._disconnected = asyncio.get_running_loop().create_future()

    # -- picows callbacks (synchronous, inside the protocol) -----------------

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._ws = transport
        underlying = transport.underlying_transport
        self._inbox.socket = underlying
        inner = underlying.get_protocol()
        if isinstance(inner, asyncio.BufferedProtocol):
            underlying.set_protocol(_CappedReads(inner))

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        try:
            kind = frame.msg_type
            # The hot path: a whole, unfragmented message. After any close frame
            # sent (ours, or picows' own on a protocol error) frames take the
            # careful path, and so does anything unusual.
            if (
                frame.fin
                and (kind is _BINARY or kind is _TEXT)
                and self._parts is None
                and not transport.is_close_frame_sent
                and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
            ):
                if kind is _BINARY:
                    data: Data = frame.get_payload_as_bytes()
                else:
                    try:
                        data = frame.get_payload_as_utf8_text()
                    except UnicodeDecodeError as exc:
                        self._fail(1007, f"{exc.reason} at position {exc.start}")
                        return
                # Inbox.push, inlined: this runs once per frame.
                inbox = self._inbox
                if inbox.inline:
                    inbox.take(data)
                    return
                messages = inbox.messages
                messages.append(data)
                inbox.size += len(data)
                if (
                    len(messages) > HIGH_WATER or inbox.size > HIGH_WATER_BYTES
                ) and not inbox.paused:
                    inbox.pause()
                waiter = inbox.waiter
                if waiter is not None:
                    inbox.waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
                return
            self._other_frame(transport, frame, kind)
        except Exception as exc:  # a bug here must not leave the socket half-read
            _PICOWS_LOG.exception("picows frame callback failed")
            self._fail(1011, f"internal error: {type(exc).__name__}")

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._fail_waiters()
        if not self._disconnected.done():
            self._disconnected.set_result(None)
        self._inbox.wake()

    def pause_writing(self) -> None:
        if self._write_ready is None:
            self._write_ready = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        ready, self._write_ready = self._write_ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    # -- the frame path --------------------------------------------------------

    def _other_frame(self, transport: picows.WSTransport, frame: picows.WSFrame, kind: Any) -> None:
        """Everything but a whole data frame: fragments, pongs, close, bad bits."""
        if kind is picows.WSMsgType.CLOSE:
            self._on_close(transport, frame)
            return
        if kind is picows.WSMsgType.PONG:
            self._on_pong(frame.get_payload_as_bytes())
            return
        if self._failed or kind is picows.WSMsgType.PING:  # pings: answered by picows
            return
        if frame.payload_size > self._max_size:
            # picows refused this frame (1009) when its header came in, and then
            # went on reading its payload: it is not a message.
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(1002, "reserved bits must be 0")
            return
        if kind is picows.WSMsgType.CONTINUATION:
            if self._parts is None:
                self._fail(1002, "unexpected continuation frame")
                return
            if len(self._parts) >= MAX_FRAGMENTS:
                self._fail(1009, "too many fragments")
                return
        elif self._parts is not None:
            self._fail(1002, "expected a continuation frame")
            return
        else:
            self._parts = []
            self._parts_size = 0
            self._parts_text = kind is picows.WSMsgType.TEXT
        self._parts_size += frame.payload_size
        if self._parts_size > self._max_size:
            self._fail(
                1009,
                f"message with {self._parts_size} bytes exceeds limit of {self._max_size} bytes",
            )
            return
        self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        payload = b"".join(self._parts)
        self._parts = None
        if not self._parts_text:
            self._inbox.push(payload)
            return
        try:
            self._inbox.push(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._fail(1007, f"{exc.reason} at position {exc.start}")

    def _on_close(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """The peer's close frame: echo it (unless we closed first), then hang up."""
        if not transport.is_close_frame_sent:
            code = frame.get_close_code()
            if code == picows.WSCloseCode.NO_INFO:
                transport.send(picows.WSMsgType.CLOSE, b"")  # echo an empty close as empty
            else:
                transport.send_close(code, frame.get_close_message())
        self._failed = True  # nothing after a close frame is a message
        transport.disconnect()

    def _on_pong(self, payload: bytes) -> None:
        # Like websockets: a pong answers its ping and every ping sent before it.
        if payload not in self._pings:
            return
        for key in list(self._pings):
            future = self._pings.pop(key)
            if not future.done():
                future.set_result(True)
            if key == payload:
                break

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection ourselves: send a close frame with ``code`` and hang up."""
        ws = self._ws
        self._failed = True
        self._parts = None
        if ws is None or ws.is_disconnected:
            return
        if not ws.is_close_frame_sent:
            ws.send_close(picows.WSCloseCode(code), reason.encode("utf-8")[:123])
        # The reason is in the close frame we sent; its reply adds nothing.
        ws.disconnect()

    def _fail_waiters(self) -> None:
        for future in self._pings.values():
            if not future.done():
                future.set_result(False)
        self._pings.clear()
        self.resume_writing()

    def closed_error(self) -> ConnectionClosed:
        """The ``ConnectionClosed`` that sending on this closed connection raises."""
        rcvd, sent = self._close_frames()
        return ConnectionClosedError(rcvd, sent)

    # -- Transport -------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self._ws.underlying_transport if self._ws is not None else None

    @property
    def _closed(self) -> bool:
        ws = self._ws
        return ws is None or ws.is_disconnected or ws.is_close_frame_sent

    async def read(self, handle: FrameHandler) -> None:
        await self._inbox.drain(handle, self._disconnected.done)

    async def send(self, data: Data) -> None:
        ws = self._ws
        if ws is None or self._closed:
            raise self.closed_error()
        if isinstance(data, str):
            ws.send(picows.WSMsgType.TEXT, data)
        else:
            ws.send(picows.WSMsgType.BINARY, data)
        ready = self._write_ready
        if ready is not None:  # above the socket's write high-water mark: wait for it to drain
            await ready

    async def ping(self) -> Awaitable[object]:
        ws = self._ws
        if ws is None or self._closed:
            raise self.closed_error()
        self._ping_counter += 1
        payload = self._ping_counter.to_bytes(8, "big")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pings[payload] = future
        ws.send_ping(payload)
        return _PongWaiter(future, self)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self._ws
        # The reader is gone: drop data frames, and read the socket again (a full
        # handler queue may have paused it) so that the peer's close reply arrives.
        self._failed = True
        self._parts = None
        self._inbox.discard()
        if ws is not None and not ws.is_disconnected:
            if not ws.is_close_frame_sent:
                ws.send_close(picows.WSCloseCode(code), reason.encode("utf-8")[:123])
            with anyio.move_on_after(self._close_timeout):
                await asyncio.shield(self._disconnected)
        self.abort()
        if ws is not None:
            with anyio.move_on_after(1.0):
                # Collects the error picows keeps for its own protocol failures, which
                # asyncio would otherwise log as never retrieved; close_details has it.
                with contextlib.suppress(Exception):
                    await ws.wait_disconnected()

    def abort(self) -> None:
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            ws.disconnect(graceful=False)

    def close_details(self) -> tuple[int | None, str | None]:
        rcvd, sent = self._close_frames()
        # As for websockets: a close we sent for a reason of ours (1002, 1007,
        # 1009) is what the peer's missing or echoed reply would hide.
        if rcvd is None and sent is not None and sent.code not in (1000, 1001):
            return sent.code, sent.reason or None
        if rcvd is None:
            return 1006, None
        return rcvd.code, rcvd.reason or None

    def _close_frames(self) -> tuple[Close | None, Close | None]:
        ws = self._ws
        handshake = ws.close_handshake if ws is not None else None
        if handshake is None:
            return None, None
        return _close_frame(handshake.recv), _close_frame(handshake.sent)


def _close_frame(info: Any) -> Close | None:
    """picows' close info as websockets' ``Close`` (an empty close frame is 1005)."""
    if info is None:
        return None
    code = int(info.code) or 1005
    return Close(code, info.reason or "")
