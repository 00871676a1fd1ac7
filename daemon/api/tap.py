"""``/tap``: live decoded messages, to a bounded number of WebSocket clients, never slowing
the daemon's readers.

Invariants: while no client is connected the dispatcher's ``tap`` is
``None`` (the dispatcher's cost is one attribute check per message); while at
least one is, it is :meth:`TapHub.hook`, which only matches each client's
filter and appends one shared :class:`_Entry` per message (made once, for
every client it matches) to the client's buffer — never awaits, never
encodes, never touches a socket. A client's buffer is bounded in bytes
(``[daemon.api] tap_buffer``; a message counts :func:`entry_size`): what does
not fit is counted, and the client gets ``{"event": "tap_dropped", "count":
N}`` in its place, before the next record it gets. One message larger than
the bound is still sent when the buffer is empty.

The record of a message is encoded once, as a whole WebSocket text frame, by
the first sender that needs it, and the same bytes go to every client
(:meth:`_Entry.frame`). Each client's own sender task takes what is buffered,
up to :data:`BATCH_BYTES` at a time, and writes it to its socket in one call;
it writes the frames itself (server frames are unmasked and the API never
negotiates compression) on the transport asyncio gave the connection, and
only while websockets has the connection open, so a close, ping or pong of
websockets' never lands inside one of them. A client whose socket does not
take what is written within :data:`WRITE_TIMEOUT` is dropped (its socket
aborted, ``api_client_dropped``): a stalled client holds at most its buffer
and one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..budget import message_size
from ..records import record
from .clients import WRITE_TIMEOUT, ApiConnection

if TYPE_CHECKING:
    from ..config import RouteSection
    from ..handler import HandlerRunner
    from ..plugin import Message
    from ..view import DaemonView

__all__ = ["BATCH_BYTES", "FILTERS", "RECORD_OVERHEAD", "TapClient", "TapFilter", "TapHub"]

log = structlog.get_logger("wsroute.api")

#: Bytes a message is counted for in a tap buffer beyond :func:`~wsroute.budget.message_size`:
#: the record's other fields and the entry itself.
RECORD_OVERHEAD = 256

#: Most bytes of frames one sender writes in one call before it looks at its socket again.
BATCH_BYTES = 256 * 2**10

#: The query parameters a tap filters on; each may be repeated (any value matches).
FILTERS = ("connection", "key", "handler", "route")


def _fallback(value: Any) -> Any:
    return str(value)  # as the record format does: never refuse a message over a type


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


@dataclass(frozen=True)
class _RouteMatch:
    """One ``route=NAME``: a message it routed — its connection and key, to its handlers."""

    connection: str | None
    keys: frozenset[str] | None
    handlers: frozenset[str]

    def __call__(self, message: Message, names: set[str]) -> bool:
        if self.connection is not None and message.connection != self.connection:
            return False
        if self.keys is not None and str(message.key) not in self.keys:
            return False
        return not self.handlers.isdisjoint(names)


@dataclass(frozen=True)
class TapFilter:
    """What one client asked for; an empty field matches everything."""

    connections: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    handlers: frozenset[str] = frozenset()
    routes: tuple[_RouteMatch, ...] = ()

    @classmethod
    def parse(
        cls, query: Mapping[str, Sequence[str]], routes: Mapping[str, RouteSection]
    ) -> TapFilter:
        """From parsed query parameters; ``ValueError`` naming an unknown parameter or route."""
        unknown = sorted(set(query) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown tap filter {unknown[0]!r}: use {', '.join(FILTERS)}")
        matches = []
        for name in query.get("route", ()):
            route = routes.get(name)
            if route is None:
                raise ValueError(f"unknown route {name!r}")
            keys = route.keys
            matches.append(
                _RouteMatch(
                    route.connection,
                    None if keys is None else frozenset(str(k) for k in keys),
                    frozenset(route.handlers),
                )
            )
        return cls(
            frozenset(query.get("connection", ())),
            frozenset(query.get("key", ())),
            frozenset(query.get("handler", ())),
            tuple(matches),
        )

    @property
    def everything(self) -> bool:
        return not (self.connections or self.keys or self.handlers or self.routes)

    def __call__(self, message: Message, targets: tuple[HandlerRunner, ...]) -> bool:
        if self.connections and message.connection not in self.connections:
            return False
        if self.keys and str(message.key) not in self.keys:
            return False
        if self.handlers or self.routes:
            names = {runner.name for runner in targets}
            if self.handlers and self.handlers.isdisjoint(names):
                return False
            if self.routes and not any(route(message, names) for route in self.routes):
                return False
        return True


def entry_size(message: Message) -> int:
    """The bytes a message is counted for in a tap client's buffer."""
    return message_size(message) + RECORD_OVERHEAD


class _Entry:
    """One tapped message, shared by every client it matched; its frame built once."""

    __slots__ = ("_frame", "message", "size", "targets")

    def __init__(self, message: Message, targets: tuple[HandlerRunner, ...]) -> None:
        self.message = message
        self.targets = targets
        self.size = entry_size(message)
        self._frame: bytes | None = None

    def frame(self) -> bytes:
        """The record as a whole WebSocket text frame (built at the first call)."""
        if self._frame is None:
            message = self.message
            names = [runner.name for runner in self.targets]
            text = message.body_json
            if text is not None and message.dead_letter is None and not _spans_lines(text):
                # The common record, as a struct: what record() and "handlers" give,
                # field for field, for a third less time.
                data = _encoder.encode(
                    _Record(
                        message.connection,
                        message.key,
                        message.seq,
                        message.received_at,
                        message.fields,
                        msgspec.Raw(text),
                        names,
                    )
                )
            else:
                out = record(message, verbatim=True)
                out["handlers"] = names
                data = _encoder.encode(out)
            self._frame = text_frame(data)
        return self._frame


class _Record(msgspec.Struct):
    """:func:`~wsroute.records.record` of a message whose body is validated JSON and
    that is no dead letter, plus the tap's ``handlers``, in the same order."""

    connection: str
    key: Any
    seq: int
    received_at: float
    fields: Any
    body: msgspec.Raw
    handlers: list[str]


def _spans_lines(text: bytes | str) -> bool:
    # As the record format: a body spanning lines is written decoded, on one line.
    if isinstance(text, str):
        return "\n" in text or "\r" in text
    return b"\n" in text or b"\r" in text


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final WebSocket text frame (a server's frame)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 2**16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class TapClient:
    """One connected ``/tap`` client: its filter, its byte-bounded buffer, its drop count."""

    def __init__(self, match: TapFilter, limit: int, ws: ApiConnection, *, unix: bool) -> None:
        self.ws = ws
        self.unix = unix
        self.match: Callable[[Message, tuple[HandlerRunner, ...]], bool] | None = (
            None if match.everything else match
        )
        # Dead letters (given to the hook by the runner that takes them) go only to a
        # client that names that handler: to the others they would be a second
        # record of a message they already saw routed.
        self.handlers = match.handlers
        self.limit = limit
        # Entries to send, or an int: that many were dropped here, just before the next.
        self.buffer: deque[_Entry | int] = deque()
        self.queued_bytes = 0
        self.dropped = 0  # dropped since the last entry that fit
        self.dropped_total = 0
        self.wake = asyncio.Event()

    def wants(self, message: Message, targets: tuple[HandlerRunner, ...]) -> bool:
        """Whether this client's filter takes the message."""
        if self.match is not None and not self.match(message, targets):
            return False
        return message.dead_letter is None or not self.handlers.isdisjoint(
            runner.name for runner in targets
        )

    def offer(self, entry: _Entry) -> None:
        """Buffer ``entry`` if it fits; never blocks (what does not fit counts a drop)."""
        if self.queued_bytes + entry.size > self.limit and self.buffer:
            self.dropped += 1
            self.dropped_total += 1
            return
        if self.dropped:
            self.buffer.append(self.dropped)
            self.dropped = 0
        self.buffer.append(entry)
        self.queued_bytes += entry.size
        if not self.wake.is_set():
            self.wake.set()

    def _batch(self) -> list[bytes]:
        """Frames to write now, taken off the buffer: up to :data:`BATCH_BYTES` (one at least)."""
        frames: list[bytes] = []
        size = 0
        buffer = self.buffer
        while buffer and size < BATCH_BYTES:
            item = buffer.popleft()
            if isinstance(item, int):
                data = text_frame(_encoder.encode({"event": "tap_dropped", "count": item}))
            else:
                self.queued_bytes -= item.size
                data = item.frame()
            frames.append(data)
            size += len(data)
        return frames

    async def send(self, ws: ApiConnection) -> None:
        """Write what is buffered, as it comes, until the connection closes; a socket that
        takes nothing for :data:`WRITE_TIMEOUT` cuts the client off."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer:
                frames = self._batch()
                if ws.state is not State.OPEN:
                    return  # websockets is closing it: nothing may follow its close frame
                ws.write_frames(frames)
                try:
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await ws.writable()
                except TimeoutError:
                    log.warning(
                        "api_client_dropped",
                        endpoint="/tap",
                        reason="writes blocked",
                        timeout=WRITE_TIMEOUT,
                    )
                    ws.cut_off()
                    return
                await asyncio.sleep(0)  # one batch per turn: the readers run in between


class TapHub:
    """Every ``/tap`` client; installs :meth:`hook` as the dispatcher's ``tap`` while any is."""

    def __init__(self, service: DaemonView) -> None:
        self.service = service
        self.clients: list[TapClient] = []

    def hook(self, message: Message, targets: tuple[HandlerRunner, ...]) -> None:
        """The dispatcher's ``tap``: called for every message it routes."""
        entry = None
        for client in self.clients:
            if client.wants(message, targets):
                if entry is None:
                    entry = _Entry(message, targets)
                client.offer(entry)

    def _install(self) -> None:
        self.service.set_tap(self.hook if self.clients else None)

    def __len__(self) -> int:
        return len(self.clients)

    def set_limit(self, limit: int) -> None:
        """A reload's ``tap_buffer``: every open client's bound from now on."""
        for client in self.clients:
            client.limit = limit

    async def close_tcp(self, grace: float) -> None:
        """Close the clients on TCP addresses (``tap_over_tcp`` turned off), within
        ``grace`` seconds; a client still open then is cut off."""
        tcp = [client for client in self.clients if not client.unix]
        if not tcp:
            return
        with anyio.move_on_after(grace):
            async with anyio.create_task_group() as tg:
                for client in tcp:
                    tg.start_soon(client.ws.close, 1008, "/tap is served on the Unix socket only")
        for client in tcp:
            if client.ws.state is not State.CLOSED:
                client.ws.cut_off()
        log.info("tap_closed_on_tcp", clients=len(tcp))

    async def serve(self, ws: ApiConnection, match: TapFilter, limit: int, *, unix: bool) -> None:
        """One client's life: buffered and sent to until it (or the server) closes."""
        client = TapClient(match, limit, ws, unix=unix)
        # A new list each time: the hook may be iterating the old one.
        self.clients = [*self.clients, client]
        self._install()
        log.info("tap_opened", clients=len(self.clients))
        sender = asyncio.create_task(client.send(ws))
        try:
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:  # what a client sends is ignored; this sees the close
                    pass
        finally:
            self.clients = [c for c in self.clients if c is not client]
            self._install()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            log.info("tap_closed", clients=len(self.clients), dropped=client.dropped_total)
