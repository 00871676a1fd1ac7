"""``/tap``: live decoded messages, to any number of WebSocket clients, never slowing the daemon.

Invariants: while no client is connected the dispatcher's ``tap`` is
``None`` (the dispatcher's cost is one attribute check per message); while at
least one is, it is :meth:`TapHub.hook`, which only matches each client's
filter, appends to the client's bounded buffer (:data:`BUFFER` records) and
sets an event — never awaits, never encodes, never touches a socket. What
does not fit in a client's buffer is counted, and the client gets
``{"event": "tap_dropped", "count": N}`` in its place, before the next record
it gets. Each client's own sender task encodes and sends; a client that
stops reading only ever blocks that task, and for :data:`WRITE_TIMEOUT` at
most: then the client is dropped (its socket aborted, ``api_client_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from websockets.exceptions import ConnectionClosed

from ..records import record
from .clients import WRITE_TIMEOUT, ApiConnection

if TYPE_CHECKING:
    from ..config import RouteSection
    from ..handler import HandlerRunner
    from ..plugin import Message
    from ..view import DaemonView

__all__ = ["BUFFER", "FILTERS", "TapClient", "TapFilter", "TapHub"]

log = structlog.get_logger("wsroute.api")

#: Records buffered per client; what arrives while it is full is dropped and counted.
BUFFER = 1000

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


class TapClient:
    """One connected ``/tap`` client: its filter, its buffer and its drop count."""

    def __init__(self, match: TapFilter) -> None:
        self.match: Callable[[Message, tuple[HandlerRunner, ...]], bool] | None = (
            None if match.everything else match
        )
        # Dead letters (given to the hook by the runner that takes them) go only to a
        # client that names that handler: to the others they would be a second
        # record of a message they already saw routed.
        self.handlers = match.handlers
        # Records to send: (message, its targets), or an int — that many were dropped here.
        self.buffer: deque[tuple[Message, tuple[HandlerRunner, ...]] | int] = deque()
        self.dropped = 0  # dropped since the last record that fit
        self.dropped_total = 0
        self.wake = asyncio.Event()

    def offer(self, message: Message, targets: tuple[HandlerRunner, ...]) -> None:
        """Buffer one message if it matches; never blocks (a full buffer counts a drop)."""
        if self.match is not None and not self.match(message, targets):
            return
        if message.dead_letter is not None and self.handlers.isdisjoint(
            runner.name for runner in targets
        ):
            return
        buffer = self.buffer
        if len(buffer) >= BUFFER:
            self.dropped += 1
            self.dropped_total += 1
            return
        if self.dropped:
            buffer.append(self.dropped)
            self.dropped = 0
        buffer.append((message, targets))
        if not self.wake.is_set():
            self.wake.set()

    async def send(self, ws: ApiConnection) -> None:
        """Send what is buffered, as it comes, until the connection closes; a send
        that does not complete within :data:`WRITE_TIMEOUT` cuts the client off."""
        buffer = self.buffer
        while True:
            await self.wake.wait()
            self.wake.clear()
            while buffer:
                item = buffer.popleft()
                if isinstance(item, int):
                    data = _encoder.encode({"event": "tap_dropped", "count": item})
                else:
                    message, targets = item
                    out = record(message, verbatim=True)
                    out["handlers"] = [runner.name for runner in targets]
                    data = _encoder.encode(out)
                try:
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await ws.send(data, text=True)
                except TimeoutError:
                    log.warning(
                        "api_client_dropped",
                        endpoint="/tap",
                        reason="writes blocked",
                        timeout=WRITE_TIMEOUT,
                    )
                    ws.cut_off()
                    return


class TapHub:
    """Every ``/tap`` client; installs :meth:`hook` as the dispatcher's ``tap`` while any is."""

    def __init__(self, service: DaemonView) -> None:
        self.service = service
        self.clients: list[TapClient] = []

    def hook(self, message: Message, targets: tuple[HandlerRunner, ...]) -> None:
        """The dispatcher's ``tap``: called for every message it routes."""
        for client in self.clients:
            client.offer(message, targets)

    def _install(self) -> None:
        self.service.set_tap(self.hook if self.clients else None)

    async def serve(self, ws: ApiConnection, match: TapFilter) -> None:
        """One client's life: buffered and sent to until it (or the server) closes."""
        client = TapClient(match)
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
