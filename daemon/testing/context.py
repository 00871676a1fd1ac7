"""A handler's context without a daemon: what a handler sends and emits, recorded.

Invariant: nothing here touches a network or an event loop's I/O; a
:class:`RecordingContext` only appends to its lists, and it refuses exactly
what the daemon's context would refuse (an unknown connection, a frame
combination ``Outgoing.build`` rejects).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import structlog

from ..contexts import HandlerContextBase
from ..exceptions import SendError
from ..plugin import DeadLetter, HandlerContext, Key, Message, Outgoing

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger


class RecordingContext(HandlerContextBase):
    """A :class:`~wsroute.HandlerContext` that records instead of sending.

    Every ``send`` lands in ``sent`` as ``(connection, Outgoing)``, every
    ``emit`` in ``emitted``; ``subscriptions`` holds the live runtime
    subscriptions by ``(connection, name)``. Connections count as connected, so
    ``subscribe`` also records its frame in ``sent``, as the daemon would send
    it at once. With ``connections`` given, sending anywhere else raises
    :class:`~wsroute.SendError`, as an unknown connection does in the daemon.
    """

    def __init__(self, name: str = "test", *, connections: Iterable[str] | None = None) -> None:
        self._name = name
        # A lazy proxy: it binds with the structlog config of the moment it logs,
        # so structlog.testing.capture_logs() sees the lines.
        self._log = cast("FilteringBoundLogger", structlog.get_logger(handler=name))
        self.connections = None if connections is None else frozenset(connections)
        self.sent: list[tuple[str, Outgoing]] = []
        self.emitted: list[Message] = []
        self.subscriptions: dict[tuple[str, str], Outgoing] = {}

    @property
    def name(self) -> str:
        """The handler's name."""
        return self._name

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound with ``handler=NAME``."""
        return self._log

    def _check(self, connection: str) -> None:
        if self.connections is not None and connection not in self.connections:
            raise SendError(f'unknown connection "{connection}"')

    # send() and subscribe() are HandlerContextBase's: ValueError for a combination
    # of frame keywords the daemon would refuse.
    async def _send(self, connection: str, frame: Outgoing) -> None:
        """Record the frame."""
        self._check(connection)
        self.sent.append((connection, frame))

    async def emit(self, message: Message) -> None:
        """Record the derived message."""
        self.emitted.append(message)

    async def _subscribe(self, connection: str, name: str, frame: Outgoing) -> None:
        """Record the subscription and its immediate send."""
        self._check(connection)
        self.subscriptions[(connection, name)] = frame
        self.sent.append((connection, frame))

    async def unsubscribe(self, connection: str, name: str) -> None:
        """Forget the subscription."""
        self.subscriptions.pop((connection, name), None)


def message(
    body: Any = None,
    *,
    key: Key = None,
    connection: str = "test",
    fields: dict[str, Any] | None = None,
    raw: bytes | str = b"",
    seq: int = 1,
    received_at: float | None = None,
    dead_letter: DeadLetter | None = None,
) -> Message:
    """A :class:`~wsroute.Message` with defaults for what a test does not care about.

    ``received_at`` defaults to now.
    """
    return Message(
        connection,
        key,
        body,
        fields=fields,
        raw=raw,
        seq=seq,
        received_at=time.time() if received_at is None else received_at,
        dead_letter=dead_letter,
    )


if TYPE_CHECKING:

    def _conforms(ctx: RecordingContext) -> HandlerContext:
        # mypy proves here that RecordingContext implements the HandlerContext protocol.
        return ctx
