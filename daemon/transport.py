"""The WebSocket client libraries behind a :class:`~wsroute.connection.Connection`.

A connection's ``transport`` key picks one: ``"websockets"`` (the default) or
``"picows"`` (the optional ``fast`` extra: a Cython client whose receive loop
reads small frames many times faster). :func:`open_transport` connects with the
section's URL, headers, subprotocols, proxy, TLS context, ``open_timeout`` and
``max_frame_size``, follows HTTP redirects itself as the ``redirects`` key
allows (never sending the configured headers or URL credentials to another
origin), and returns a :class:`Transport` — the only face of the
socket the connection sees. Everything above it (retry loop, keepalive, idle
watch, on_connect, backpressure) is the same code for both.

Failures to connect come out as the same exceptions for both libraries:
:class:`HandshakeRejected` (an HTTP status other than 101, with the response
headers for ``Retry-After``), :class:`HandshakeFailed` (any other bad upgrade),
:class:`BadURL`, and whatever the socket layer raises (``OSError``,
``TimeoutError``, ``ssl.SSLError``). Once open, a transport reports a closed
connection with websockets' ``ConnectionClosed``, whichever library it wraps.

Both hand frames to the reader the same way, through an :class:`Inbox`: the
library's synchronous callback gives each whole message to the reader's
handler directly while the reader waits with nothing in hand (a few per
socket read at most), and otherwise appends it to a deque and wakes the
reader task, which drains everything buffered per wake-up — one task switch
per socket read, not per frame (see bench/README.md). More than
:data:`HIGH_WATER` waiting messages, or :data:`HIGH_WATER_BYTES` waiting
bytes, stop the socket being read until the reader caught up: that is how
a full handler queue (``overflow = "block"``) reaches the upstream.

The websockets implementation is here; the picows one, which has to do more
of RFC 6455 itself, is :mod:`wsroute.transport_picows`, imported only when a
connection asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable
from typing import Any, cast
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    TooManyFragments,
)
from websockets.frames import CloseCode, Frame, Opcode
from websockets.headers import build_authorization_basic
from websockets.protocol import Event, State
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from . import wire
from .config import ConnectionSection
from .net import redact_url
from .wire import (
    HIGH_WATER,
    HIGH_WATER_BYTES,
    MAX_FRAGMENTS,
    YIELD_EVERY,
    BadURL,
    Data,
    FrameHandler,
    HandshakeFailed,
    HandshakeRejected,
    Inbox,
    Opener,
    RedirectRefused,
    Transport,
    picows_available,
)

__all__ = [
    "HIGH_WATER",
    "HIGH_WATER_BYTES",
    "MAX_FRAGMENTS",
    "MAX_REDIRECTS",
    "YIELD_EVERY",
    "BadURL",
    "ConnectionClosed",
    "Data",
    "FrameHandler",
    "HandshakeFailed",
    "HandshakeRejected",
    "Inbox",
    "RedirectRefused",
    "Transport",
    "open_transport",
    "open_websockets",
    "picows_available",
]

#: The most HTTP redirects one connect follows, on either transport (websockets' own
#: default). wsroute follows them itself: see :func:`open_transport`.
MAX_REDIRECTS = 10
_REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})

_log = structlog.get_logger("wsroute.transport")


async def open_transport(
    section: ConnectionSection,
    context: ssl.SSLContext | None,
    *,
    log: Any = None,
    opener: Opener | None = None,
) -> Transport:
    """Connect and complete the WebSocket handshake with the section's library.

    HTTP redirects are followed here, not by the library, so that both
    transports behave alike: the ``redirects`` key decides (``same-origin``:
    only to the same scheme, host and port; ``any``: anywhere, but the
    configured ``headers`` and the URL's ``user:password@`` are sent to the
    configured origin only; ``none``: never), a ``wss://`` URL is never
    redirected to ``ws://``, and at most :data:`MAX_REDIRECTS` are followed,
    all within ``open_timeout``. Each redirect is logged on ``log`` (the
    connection's logger), followed or refused, with the target URL redacted.

    Raises :class:`HandshakeRejected`, :class:`HandshakeFailed` (a refused
    redirect is a :class:`RedirectRefused`), :class:`BadURL`, ``OSError``,
    ``TimeoutError`` (``open_timeout``) or ``ssl.SSLError``.

    ``opener`` is the library's connect (the connection's
    :func:`~wsroute.connection.opener_for` picks it); websockets' by default.
    """
    if opener is None:
        opener = open_websockets
    log = _log if log is None else log
    url, user_info = split_user_info(section.url)
    origin = _origin(url)
    credentials = list(section.headers.items())
    if user_info is not None:  # as websockets does with user info: Basic auth, first
        credentials.insert(0, ("Authorization", build_authorization_basic(*user_info)))
    send_credentials = True
    redirects = 0
    # The first request has the library's own open_timeout; the redirects after it
    # share what is left of it.
    deadline = anyio.current_time() + section.open_timeout if section.open_timeout else None
    while True:  # bounded: the MAX_REDIRECTS + 1st redirect is refused
        hop_context = context
        if hop_context is None and _origin(url)[0]:  # ws:// redirected to wss://
            from .tls import tls_context

            hop_context = tls_context(section.tls)
        headers = credentials if send_credentials else []
        scope: anyio.CancelScope | None = None
        try:
            if not redirects or deadline is None:
                return await opener(section, hop_context, url, headers)
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())) as scope:
                return await opener(section, hop_context, url, headers)
        except HandshakeRejected as exc:
            location = _location(exc)
            if location is None:
                raise
            redirects += 1
            url, send_credentials = _follow(
                section, log, exc, url, location, origin, send_credentials, redirects
            )
        except TimeoutError as exc:
            if scope is not None and scope.cancelled_caught:
                raise TimeoutError(f"open_timeout reached after {redirects} redirect(s)") from exc
            raise


def split_user_info(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@``, and those (percent-decoded), if any."""
    try:
        user_info = parse_uri(url).user_info
    except InvalidURI as exc:
        raise BadURL(str(exc)) from exc
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, user_info
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)), user_info


def _origin(url: str) -> tuple[bool, str, int]:
    """Scheme (secure or not), host and port, the default ports filled in."""
    uri = parse_uri(url)
    return uri.secure, uri.host.lower(), uri.port


def _location(exc: HandshakeRejected) -> str | None:
    """The ``Location`` of a redirect response; ``None`` for any other refusal."""
    if exc.status not in _REDIRECT_STATUSES or exc.headers is None:
        return None
    location = exc.headers.get("Location")
    return location.strip() if isinstance(location, str) and location.strip() else None


def _follow(
    section: ConnectionSection,
    log: Any,
    rejected: HandshakeRejected,
    current: str,
    location: str,
    origin: tuple[bool, str, int],
    send_credentials: bool,
    count: int,
) -> tuple[str, bool]:
    """Whether and how to follow one redirect: the next URL, and whether the
    configured headers and user info go with it. Logs it; raises
    :class:`RedirectRefused` when the ``redirects`` key does not allow it."""
    policy = section.redirects
    status = rejected.status
    target = urljoin(current, location)
    shown = redact_url(target, section.log_query_keys)
    why = ""
    same_origin = False
    try:
        # User info in a Location is never used: credentials come from the config only.
        target = split_user_info(target)[0]
        target_origin = _origin(target)
    except (BadURL, InvalidURI):
        why = "not a ws:// or wss:// URL"
    else:
        same_origin = target_origin == origin
        if policy == "none":
            why = 'redirects = "none"'
        elif count > MAX_REDIRECTS:
            why = f"more than {MAX_REDIRECTS} redirects"
        elif origin[0] and not target_origin[0]:
            why = "wss:// redirected to ws://"
        elif not same_origin and policy == "same-origin":
            why = 'another origin (redirects = "same-origin")'
    if why:
        log.warning("redirect_refused", status=status, url=shown, reason=why)
        raise RedirectRefused(f"redirect refused: HTTP {status} to {shown}: {why}") from rejected
    send_credentials = send_credentials and same_origin
    log.info(
        "redirect_followed",
        status=status,
        url=shown,
        same_origin=same_origin,
        credentials="sent" if send_credentials else "dropped",
    )
    return target, send_credentials


# -- websockets -----------------------------------------------------------------


class _NoRedirects(connect):
    """websockets' ``connect``, handing every redirect back: :func:`open_transport` decides."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


async def open_websockets(
    section: ConnectionSection,
    context: ssl.SSLContext | None,
    url: str,
    headers: list[tuple[str, str]],
) -> WebsocketsTransport:
    s = section
    try:
        ws = await _NoRedirects(
            url,
            additional_headers=headers or None,
            subprotocols=list(s.subprotocols) or None,  # type: ignore[arg-type]
            compression="deflate" if s.compression == "deflate" else None,
            proxy=None if s.proxy == "none" else True if s.proxy == "env" else s.proxy,
            ssl=context,
            open_timeout=s.open_timeout or None,
            ping_interval=None,  # the connection's own keepalive
            ping_timeout=None,
            close_timeout=s.close_timeout,
            max_size=s.max_frame_size or None,
            create_connection=_ReadingConnection,
        )
    except InvalidStatus as exc:
        raise HandshakeRejected(exc.response.status_code, exc.response.headers) from exc
    except InvalidURI as exc:
        raise BadURL(str(exc)) from exc
    except InvalidHandshake as exc:
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    assert isinstance(ws, _ReadingConnection)
    return WebsocketsTransport(ws, s.close_timeout)


_BINARY, _TEXT, _CONT = Opcode.BINARY, Opcode.TEXT, Opcode.CONT

# The fast frame path (see _ReadingConnection): the first byte of a whole, unfragmented
# text or binary frame (FIN set, no reserved bits), and the largest frame it buffers
# across socket reads; a larger one is left to websockets' parser.
_FIN_TEXT, _FIN_BINARY = 0x81, 0x82
_FAST_PARTIAL_MAX = 64 * 1024
# What websockets' parser is suspended in between two frames (a generator-based
# coroutine waiting for the next frame's first byte); None if websockets has no such
# thing, and then every frame goes through websockets' parser.
_AT_EOF_CODE = getattr(getattr(StreamReader, "at_eof", None), "__code__", None)


class _ReadingConnection(ClientConnection):
    """websockets' client connection, with data frames taken out before its ``recv()``.

    websockets turns every frame into a message through an Assembler, a queue
    and ``recv()``; with small frames that costs as much as parsing them. Here
    :meth:`process_event` (synchronous, inside ``data_received``) turns each
    whole message into ``bytes`` or ``str`` and appends it to :attr:`inbox`, as
    the picows transport does; :meth:`WebsocketsTransport.read` drains it.
    What websockets' ``recv()`` checks is checked here, and fails the
    connection the same way: invalid UTF-8 in a text message (1007), more than
    :data:`MAX_FRAGMENTS` fragments (1009). The protocol underneath still does
    the rest of RFC 6455: frame sizes (1009, on the whole message too), the
    order of fragments, control frames, the close handshake, deflate.

    **The fast frame path.** websockets' parser (a generator per frame, a
    ``Frame`` object, an event list) costs more per small frame than everything
    wsroute does with it. So :meth:`data_received` splits a socket read into
    frames itself, from their headers, and takes the common one — a whole,
    unmasked text or binary frame with no reserved bit, within the size limits,
    while the connection is open and no fragmented message is in progress —
    straight to the inbox. Every other frame (control frames, fragments,
    anything invalid or too large) is handed to websockets whole, in order,
    through the ordinary path, and websockets decides what it means (a pong
    answers a ping, a close starts the closing handshake, a masked or reserved
    frame fails the connection). It only runs while websockets' parser is
    between two frames with nothing buffered: then websockets sees only whole
    frames, and what it does with them is exactly what it would have done.
    A frame that spans socket reads waits in :attr:`_rest` up to
    :data:`_FAST_PARTIAL_MAX` bytes; a larger one, a connection with an
    extension (permessage-deflate: its frames depend on each other), or a
    parser websockets has moved on from (after a close frame) go to websockets
    byte for byte until it is between two frames again.

    ``recv()`` and iterating this connection wait forever: nothing feeds them.
    """

    inbox: Inbox
    #: Data frames are taken into :attr:`inbox`; ``False`` once refused or closing.
    taking: bool
    #: Why the connection must fail — close code, reason, cause — once the
    #: reader reaches the bad message; later data frames are dropped.
    refused: tuple[int, str, Exception] | None
    _parts: list[bytes] | None
    _parts_text: bool
    #: Reads are split into frames here (the fast frame path), not by websockets.
    _fast: bool
    #: The start of a frame the next read completes (fast path only).
    _rest: bytes
    #: The largest frame the fast path takes (websockets' limits); ``None``: no limit.
    _limit: int | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # websockets parses (and inflates) every frame of a socket read in one
        # data_received, before any of them reaches the reader and with nothing else
        # running, so the read size bounds two things: what one read can inflate past
        # the queue bounds (asyncio's 256 KiB of ~1 KiB compressed frames was ~250 MB
        # of 900 KB messages; 16 KiB: ~20 such frames), and how long the loop is held
        # (256 KiB of small frames: ~2,800 frames, several milliseconds, during which a
        # slow handler's timer waits — a drop-oldest handler under a flood got 0.74x
        # of what the bare loop's slow consumer gets; 16 KiB: ~180 frames, 1.0x).
        # Measured: no cost in frames/s or CPU per frame (bench/README.md).
        # (asyncio's selector transport only; the attribute is not public.)
        if getattr(transport, "max_size", None) is not None:
            transport.max_size = wire.READ_SIZE  # type: ignore[attr-defined]
        self.inbox = Inbox()
        self.inbox.socket = cast(asyncio.ReadTransport, transport)
        self.taking = True
        self.refused = None
        self._parts = None
        self._parts_text = False
        self._fast = False
        self._rest = b""
        self._limit = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.inbox.wake()

    def eof_received(self) -> None:
        rest, self._rest = self._rest, b""
        if rest:  # a frame cut short: websockets reports it as it would have
            self._fast = False
            super().data_received(rest)
        super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        elif not self._fast:
            if not self._between_frames():
                super().data_received(data)
                return
            self._fast = True
        self._split(data)

    def _between_frames(self) -> bool:
        """websockets' parser waits for a frame's first byte with nothing buffered, and
        the fast path may run: open, no extension, the size limits known."""
        protocol = self.protocol
        if protocol.state is not State.OPEN or protocol.extensions or protocol.reader.buffer:
            return False
        try:  # the limits websockets' parser enforces (1009), enforced the same way here
            message_limit: int | None = protocol.max_message_size
            fragment_limit: int | None = protocol.max_fragment_size
        except AttributeError:  # another websockets: leave every frame to its parser
            return False
        limits = [n for n in (message_limit, fragment_limit) if n is not None]
        self._limit = min(limits) if limits else None
        # The innermost generator the parser waits in (the client's parse() delegates
        # to the protocol's, which waits in the stream reader's at_eof()).
        waiting = protocol.parser
        for _ in range(4):
            inner = getattr(waiting, "gi_yieldfrom", None)
            if inner is None:
                break
            waiting = inner
        return _AT_EOF_CODE is not None and getattr(waiting, "gi_code", None) is _AT_EOF_CODE

    def _split(self, data: bytes) -> None:
        """The fast frame path, over one socket read (see the class docstring)."""
        limit = self._limit
        size = len(data)
        pos = 0
        inbox = self.inbox
        messages = inbox.messages
        while size - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:
                head += 4  # masked: websockets refuses it (1002)
            end = pos + head + length
            if end > size:  # the frame ends in a later read
                if end - pos > _FAST_PARTIAL_MAX or (limit is not None and length > limit):
                    self._fast = False  # websockets takes it from here (or refuses it)
                    super().data_received(data[pos:])
                    return
                break
            if (
                _FIN_TEXT <= first <= _FIN_BINARY
                and second < 0x80
                and self.taking
                and self._parts is None
                and (limit is None or length <= limit)
            ):
                payload = data[pos + head : end]
                pos = end
                if first == _FIN_BINARY:
                    message: Data = payload
                else:
                    try:
                        message = str(payload, "utf-8")
                    except UnicodeDecodeError as exc:
                        self._refuse(CloseCode.INVALID_DATA, exc)
                        continue
                # Inbox.push, inlined: this runs once per frame.
                if inbox.inline:
                    inbox.take(message)
                    continue
                messages.append(message)
                inbox.size += len(message)
                if (
                    len(messages) > HIGH_WATER or inbox.size > HIGH_WATER_BYTES
                ) and not inbox.paused:
                    inbox.pause()
                waiter = inbox.waiter
                if waiter is not None:
                    inbox.waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
                continue
            # Anything else, whole, to websockets: it does what it would have done.
            super().data_received(data[pos:end])
            pos = end
            if not self._between_frames():  # a close frame, a failure: websockets' from here
                self._fast = False
                if pos < size:
                    super().data_received(data[pos:])
                return
        if pos < size:
            self._rest = data[pos:]

    def process_event(self, event: Event) -> None:
        # Once per frame: the whole, unfragmented data frame goes first, inline.
        if self.response is None:  # the handshake's response
            super().process_event(event)
            return
        frame: Frame = event  # type: ignore[assignment]  # after the handshake: frames
        opcode = frame.opcode
        if frame.fin and self._parts is None and self.taking:
            if opcode is _BINARY:
                data: Data = bytes(frame.data)
            elif opcode is _TEXT:
                try:
                    data = str(frame.data, "utf-8")
                except UnicodeDecodeError as exc:
                    self._refuse(CloseCode.INVALID_DATA, exc)
                    return
            else:
                super().process_event(event)  # a pong acknowledges pings; the rest is done
                return
            # Inbox.push, inlined: this runs once per frame.
            inbox = self.inbox
            if inbox.inline:
                inbox.take(data)
                return
            messages = inbox.messages
            messages.append(data)
            inbox.size += len(data)
            if (len(messages) > HIGH_WATER or inbox.size > HIGH_WATER_BYTES) and not inbox.paused:
                inbox.pause()
            waiter = inbox.waiter
            if waiter is not None:
                inbox.waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            return
        if opcode is _BINARY or opcode is _TEXT or opcode is _CONT:
            self._fragment(frame.data, opcode, frame.fin)
        else:
            super().process_event(event)

    def _fragment(self, payload: bytes | bytearray | memoryview, opcode: Opcode, fin: bool) -> None:
        """A fragment of a message (the protocol has checked their order and total size)."""
        if not self.taking:
            return
        if opcode is _CONT:
            parts = self._parts
            assert parts is not None  # the protocol refuses a stray continuation (1002)
            if len(parts) >= MAX_FRAGMENTS:
                self._refuse(CloseCode.MESSAGE_TOO_BIG, TooManyFragments(MAX_FRAGMENTS))
                return
            parts.append(bytes(payload))
        else:
            parts = self._parts = [bytes(payload)]
            self._parts_text = opcode is _TEXT
        if not fin:
            return
        self._parts = None
        message = b"".join(parts)
        if not self._parts_text:
            self.inbox.push(message)
            return
        try:
            self.inbox.push(message.decode())
        except UnicodeDecodeError as exc:
            self._refuse(CloseCode.INVALID_DATA, exc)

    def _refuse(self, code: CloseCode, exc: Exception) -> None:
        """A message websockets' ``recv()`` would fail on: fail once the reader gets there."""
        if isinstance(exc, UnicodeDecodeError):
            reason = f"{exc.reason} at position {exc.start}"
        else:
            reason = "too many fragments"
        self.refused = (int(code), reason, exc)
        self.taking = False
        self._parts = None
        self.inbox.pause()  # nothing after it is a message: stop reading meanwhile
        self.inbox.wake()

    def stop_taking(self) -> None:
        """The reader is gone (closing): drop data frames, read the socket again.

        Reading may be paused by a full handler queue; the peer's reply to our
        close frame must still be read, or closing waits the whole close_timeout.
        """
        self.taking = False
        self._parts = None
        self.inbox.discard()

    async def fail_refused(self) -> None:
        """Fail the connection for :attr:`refused`, as websockets' ``recv()`` does."""
        assert self.refused is not None
        code, reason, exc = self.refused
        self.set_connection_exc(exc)
        with contextlib.suppress(ConnectionClosed):
            async with self.send_context():
                self.protocol.fail(code, reason)


class WebsocketsTransport:
    """A websockets ``ClientConnection``, as a :class:`Transport`."""

    def __init__(self, ws: _ReadingConnection, close_timeout: float) -> None:
        self.ws = ws
        self.close_timeout = close_timeout

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self.ws.transport

    async def read(self, handle: FrameHandler) -> None:
        ws = self.ws
        lost = ws.connection_lost_waiter
        # drain() resumes reading before it returns: the peer's reply to the close
        # frame that fail_refused() sends gets through.
        await ws.inbox.drain(handle, lambda: ws.refused is not None or lost.done())
        if ws.refused is not None:
            await ws.fail_refused()

    async def send(self, data: Data) -> None:
        await self.ws.send(data)

    async def ping(self) -> Awaitable[object]:
        return await self.ws.ping()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.stop_taking()
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
