"""The socket behind a :class:`~wsroute.connection.Connection`: connect, handshake, frames.

:func:`open_transport` connects with the section's URL, headers,
subprotocols, proxy (:mod:`wsroute.proxy`), TLS context, ``open_timeout`` and
``max_frame_size``, follows HTTP redirects itself as the ``redirects`` key
allows (never sending the configured headers or URL credentials to another
origin), and returns a :class:`Transport` — the only face of the socket the
connection sees.

The socket's asyncio protocol is wsroute's frame reader
(:class:`~wsroute.reader.FrameReader`): it bounds every read, splits frames,
hands plain data frames to the :class:`~wsroute.wire.Inbox` and everything else
to websockets' public sans-I/O client protocol, which speaks the rest of
RFC 6455 (the handshake, control frames, fragments, permessage-deflate, every
check). Everything above it (retry loop, keepalive, idle watch, on_connect,
backpressure) is :mod:`wsroute.connection`.

Failures to connect come out as :class:`HandshakeRejected` (an HTTP status
other than 101, with the response headers for ``Retry-After``),
:class:`HandshakeFailed` (any other bad upgrade; a proxy's refusal is a
:class:`~wsroute.wire.ProxyFailed`), :class:`BadURL`, and whatever the socket
layer raises (``OSError``, ``TimeoutError``, ``ssl.SSLError``). Once open, a
transport reports a closed connection with websockets' ``ConnectionClosed``.

The connection's reader drains the inbox: the socket callback gives each
whole message to the reader's handler directly while the reader waits with
nothing in hand (a few per socket read at most), and otherwise appends it to a
deque and wakes the reader task, which drains everything buffered per
wake-up — one task switch per socket read, not per frame (see
bench/README.md). More than :data:`HIGH_WATER` waiting messages, or
:data:`HIGH_WATER_BYTES` waiting bytes, stop the socket being read until the
reader caught up: that is how a full handler queue (``overflow = "block"``)
reaches the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import os
import ssl
import sys
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import structlog
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidURI
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .config import ConnectionSection
from .net import redact_url
from .proxy import open_tunnel, proxy_for
from .reader import FrameReader
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
    ProxyFailed,
    RedirectRefused,
    Transport,
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
    "ProxyFailed",
    "RedirectRefused",
    "Transport",
    "WebsocketsTransport",
    "open_transport",
    "open_websockets",
]

#: The most HTTP redirects one connect follows (websockets' own default). wsroute
#: follows them itself: see :func:`open_transport`.
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

    HTTP redirects are followed here, by wsroute's policy: the ``redirects`` key
    decides (``same-origin``: only to the same scheme, host and port; ``any``: anywhere, but the
    configured ``headers`` and the URL's ``user:password@`` are sent to the
    configured origin only; ``none``: never), a ``wss://`` URL is never
    redirected to ``ws://``, and at most :data:`MAX_REDIRECTS` are followed,
    all within ``open_timeout``. Each redirect is logged on ``log`` (the
    connection's logger), followed or refused, with the target URL redacted.

    Raises :class:`HandshakeRejected`, :class:`HandshakeFailed` (a refused
    redirect is a :class:`RedirectRefused`), :class:`BadURL`, ``OSError``,
    ``TimeoutError`` (``open_timeout``) or ``ssl.SSLError``.

    ``opener`` is the connect of one hop (:func:`open_websockets` by default).
    """
    if opener is None:
        opener = open_websockets
    log = _log if log is None else log
    url, user_info = split_user_info(section.url)
    origin = _origin(url)
    credentials = list(section.headers.items())
    if user_info is not None:  # as websockets does with user info: Basic auth, first
        credentials.insert(0, ("Authorization", _basic(*user_info)))
    send_credentials = True
    redirects = 0
    # The first request has its own open_timeout; the redirects after it share what
    # is left of it.
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
        shown = redact_url(target, section.log_query_keys)  # what is followed: no user info
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


def _basic(user: str, password: str) -> str:
    token = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


# -- one hop: connect, TLS, handshake --------------------------------------------------

_USER_AGENT = (
    f"Python/{sys.version_info.major}.{sys.version_info.minor} "
    f"websockets/{importlib.metadata.version('websockets')}"
)


async def open_websockets(
    section: ConnectionSection,
    context: ssl.SSLContext | None,
    url: str,
    headers: list[tuple[str, str]],
) -> WebsocketsTransport:
    """Connect to ``url`` (no user info: :func:`open_transport` turned it into
    ``headers``) and complete the handshake, within ``open_timeout``."""
    s = section
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise BadURL(str(exc)) from exc
    protocol = ClientProtocol(
        uri,
        extensions=(
            [ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5})]
            if s.compression == "deflate"
            else None
        ),
        subprotocols=[Subprotocol(p) for p in s.subprotocols] or None,
        max_size=int(s.max_frame_size),
    )
    request = protocol.connect()
    for name, value in headers:
        request.headers[name] = value
    if "User-Agent" not in request.headers:
        request.headers["User-Agent"] = _USER_AGENT
    reader = FrameReader(protocol, int(s.max_frame_size), s.close_timeout)
    with anyio.fail_after(s.open_timeout or None):
        transport = await _connect(s, context, uri.host, uri.port, reader)
        try:
            await reader.handshake(request)
        except BaseException:
            transport.abort()
            raise
    return WebsocketsTransport(reader, s.close_timeout)


async def _connect(
    section: ConnectionSection,
    context: ssl.SSLContext | None,
    host: str,
    port: int,
    reader: FrameReader,
) -> asyncio.Transport:
    """The socket to ``host:port``, directly or through the section's proxy, with
    TLS when ``context`` is given; ``reader`` is its protocol."""
    loop = asyncio.get_running_loop()
    proxy = proxy_for(section.proxy, host, port, context is not None)
    if proxy is None:
        transport, _ = await loop.create_connection(
            lambda: reader,
            host,
            port,
            ssl=context,
            server_hostname=host if context is not None else None,
        )
        return transport
    proxy_tls = None
    if proxy.scheme == "https":
        proxy_tls = ssl.create_default_context()
    tunnel, dialog = await open_tunnel(proxy, host, port, proxy_tls)
    try:
        if context is not None:
            upgraded = await loop.start_tls(tunnel, dialog, context, server_hostname=host)
            if upgraded is None:  # pragma: no cover - the loop closed meanwhile
                raise ConnectionError("TLS through the proxy failed")
            tunnel = upgraded
        tunnel.set_protocol(reader)
        reader.connection_made(tunnel)
    except BaseException:
        tunnel.abort()
        raise
    return tunnel


class WebsocketsTransport:
    """One open WebSocket over wsroute's frame reader, as a :class:`Transport`."""

    def __init__(self, reader: FrameReader, close_timeout: float) -> None:
        self.reader = reader
        self.close_timeout = close_timeout

    @property
    def subprotocol(self) -> str | None:
        return self.reader.subprotocol

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self.reader.transport

    async def read(self, handle: FrameHandler) -> None:
        reader = self.reader
        # Until the protocol left the open state (a close frame, a failure) or the
        # socket is gone, once every message before that was handed over.
        await reader.inbox.drain(
            handle, lambda: reader.lost or reader.protocol.state is not State.OPEN
        )

    def _closed(self) -> ConnectionClosed:
        protocol = self.reader.protocol
        if protocol.state is State.CLOSED:
            return protocol.close_exc
        return ConnectionClosedError(None, None)

    async def send(self, data: Data) -> None:
        reader = self.reader
        if reader.lost or reader.protocol.state is not State.OPEN:
            raise self._closed()
        reader.send(data)
        await reader.drained()

    async def ping(self) -> Awaitable[object]:
        reader = self.reader
        if reader.lost or reader.protocol.state is not State.OPEN:
            raise self._closed()
        waiter = reader.ping(os.urandom(4))
        await reader.drained()
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        reader = self.reader
        reader.close(code, reason)  # the close timer aborts after close_timeout at most
        lost = reader.lost_waiter
        if lost is not None:
            with anyio.move_on_after(self.close_timeout + 0.5):
                await asyncio.shield(lost)
        self.abort()

    def abort(self) -> None:
        self.reader.abort()

    def close_details(self) -> tuple[int | None, str | None]:
        """The code and reason to report. When we failed the connection (a frame over
        ``max_frame_size``: 1009, invalid UTF-8: 1007, a protocol error: 1002), the
        close frame we sent says why, whatever came back; otherwise the peer's close
        frame, or 1006 when none came."""
        protocol = self.reader.protocol
        if protocol.state is not State.CLOSED:  # asked before the socket is gone
            mine = self.reader.sent
            return (mine[0], mine[1] or None) if mine is not None else (None, None)
        closed = protocol.close_exc
        rcvd, sent = closed.rcvd, closed.sent
        if rcvd is None and sent is not None and sent.code not in (1000, 1001):
            return int(sent.code), sent.reason or None
        if rcvd is None:
            return 1006, None
        return int(rcvd.code), rcvd.reason or None
