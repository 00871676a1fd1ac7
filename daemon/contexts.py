"""What the daemon gives each plugin: the handler and source contexts.

A :class:`DaemonHandlerContext` is a handler's :class:`~wsroute.HandlerContext`
(send upstream through a connection's codec, emit, subscribe); a
:class:`DaemonSourceContext` is a source's :class:`~wsroute.SourceContext`
(decode, deliver with an acknowledgement — a message or a batch — and
dead-letter). Both look the connections, the dispatcher and the dead-letter
runners up on their :class:`Host` (the daemon's owner) at call time, so a
reload that replaces them is seen at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .ack import Ack
from .exceptions import SendError
from .plugin import (
    Codec,
    DeadLetter,
    Frame,
    HandlerContext,
    Message,
    Outgoing,
    SourceContext,
    StructArg,
)

if TYPE_CHECKING:
    from .connection import Connection
    from .dispatch import Dispatcher
    from .handler import HandlerRunner

__all__ = [
    "DaemonHandlerContext",
    "DaemonSourceContext",
    "HandlerContextBase",
    "Host",
    "outgoing",
]


class Host(Protocol):
    """What the contexts ask of the daemon: the parts a plugin's calls reach."""

    @property
    def dispatcher(self) -> Dispatcher: ...

    def connection(self, name: str) -> Connection:
        """The running connection ``name``; SendError if there is none."""

    def dead_letter_runner(self, source: str) -> HandlerRunner | None:
        """Where source ``source``'s dead letters go under the running config."""


class HandlerContextBase:
    """:class:`~wsroute.HandlerContext`'s ``send`` and ``subscribe``, written once.

    Their keywords (``json``, ``struct``, ``text``, ``raw``) are those of the
    protocol (:mod:`wsroute.plugin`, where they are documented); a context built
    on this class says only where a built frame goes (:meth:`_send`,
    :meth:`_subscribe`) and how a refused combination is raised (:meth:`_build`).
    The daemon's context and the testing kit's ``RecordingContext`` are.
    """

    async def send(
        self,
        connection: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send one frame upstream through ``connection``'s codec."""
        await self._send(connection, self._build(json=json, struct=struct, text=text, raw=raw))

    async def subscribe(
        self,
        connection: str,
        name: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send a frame now (if connected) and after every reconnect, until unsubscribed."""
        frame = self._build(json=json, struct=struct, text=text, raw=raw)
        await self._subscribe(connection, name, frame)

    def _build(self, **frame: Any) -> Outgoing:
        """The frame; ``ValueError`` for a combination ``Outgoing.build`` refuses."""
        return Outgoing.build(**frame)

    async def _send(self, connection: str, frame: Outgoing) -> None:
        raise NotImplementedError

    async def _subscribe(self, connection: str, name: str, frame: Outgoing) -> None:
        raise NotImplementedError


class DaemonHandlerContext(HandlerContextBase):
    """The :class:`~wsroute.HandlerContext` the daemon gives each handler."""

    def __init__(self, name: str, host: Host) -> None:
        self._name = name
        self._host = host
        self._log = structlog.get_logger("wsroute.plugin").bind(handler=name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def log(self) -> Any:
        return self._log

    def _build(self, **frame: Any) -> Outgoing:
        return outgoing(**frame)  # SendError: the handler's failure, retried or dead-lettered

    async def _send(self, connection: str, frame: Outgoing) -> None:
        await self._host.connection(connection).send(frame)

    async def _subscribe(self, connection: str, name: str, frame: Outgoing) -> None:
        await self._host.connection(connection).subscribe(name, frame)

    async def emit(self, message: Message) -> None:
        # emit(), not dispatch(): a worker must not wait for the memory budget.
        pending = self._host.dispatcher.emit(message)
        if pending is not None:
            await pending

    async def unsubscribe(self, connection: str, name: str) -> None:
        self._host.connection(connection).unsubscribe(name)


class DaemonSourceContext:
    """The :class:`~wsroute.SourceContext` the daemon gives each source."""

    def __init__(self, name: str, host: Host, codec: Codec) -> None:
        self._name = name
        self._host = host
        self._codec = codec
        self._log = structlog.get_logger("wsroute.source").bind(source=name)
        self.delivered = 0
        self.settled = 0
        # decode() is the codec's own, one call less per message.
        self.decode: Callable[[Frame], Message] = codec.decode

    @property
    def in_flight(self) -> int:
        """Delivered and not yet settled by every handler: not acknowledgeable yet."""
        return self.delivered - self.settled

    @property
    def name(self) -> str:
        return self._name

    @property
    def log(self) -> Any:
        return self._log

    async def deliver(self, message: Message, on_settled: Callable[[], None] | None = None) -> None:
        ack = None
        if on_settled is not None:

            def settled() -> None:
                self.settled += 1
                on_settled()

            ack = Ack(settled, redeliver_on_shutdown=True)
        else:
            self.settled += 1  # nothing to wait for
        self.delivered += 1
        pending = self._host.dispatcher.dispatch(message, ack)
        if pending is not None:
            await pending

    async def deliver_many(
        self, messages: Sequence[Message], on_settled: Callable[[int], None] | None = None
    ) -> None:
        # deliver() per message, without its coroutine, closure and Ack keywords: one
        # _Settled (an Ack) per message calls on_settled(index) itself.
        dispatch = self._host.dispatcher.dispatch
        if on_settled is None:
            for message in messages:
                self.delivered += 1
                self.settled += 1  # nothing to wait for
                pending = dispatch(message, None)
                if pending is not None:
                    await pending
            return
        for index, message in enumerate(messages):
            self.delivered += 1
            pending = dispatch(message, _Settled(self, on_settled, index))
            if pending is not None:
                await pending

    async def dead_letter(
        self,
        message: Message,
        reason: str,
        *,
        error: str | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        target = self._host.dead_letter_runner(self._name)
        letter = message.replace(dead_letter=DeadLetter(reason=reason, error=error))
        ack = Ack(on_settled, pending=1) if on_settled is not None else None
        if target is None or not target.accept_dead_letter(letter, ack):
            # Not acknowledged: the entry stays pending upstream rather than vanish.
            self._log.error(
                "message_lost", reason=reason, error=error, seq=message.seq, dead_letter=None
            )


class _Settled(Ack):
    """The :class:`Ack` of message ``index`` of a :meth:`DaemonSourceContext.deliver_many`
    call: once every target settled it, counts it and calls ``on_settled(index)``.

    Redelivered on shutdown (never settled then), as :meth:`~DaemonSourceContext.deliver`'s.
    """

    __slots__ = ("index", "on_settled", "source")

    def __init__(
        self, source: DaemonSourceContext, on_settled: Callable[[int], None], index: int
    ) -> None:
        # Ack.__init__'s fields, set directly: this runs once per message.
        self.pending = 0
        self.redeliver = True
        self.released = False
        self.on_working = None
        self.source = source
        self.on_settled = on_settled
        self.index = index

    @property
    def callback(self) -> Callable[[], None]:  # type: ignore[override]  # read-only here
        """What a plain :class:`Ack` stores (the dispatcher calls it for an unmatched message)."""
        return self._fire

    def done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.released:
            # self._fire(), inlined: this runs once per message.
            self.source.settled += 1
            self.on_settled(self.index)

    def _fire(self) -> None:
        self.source.settled += 1
        self.on_settled(self.index)


def outgoing(**kwargs: Any) -> Outgoing:
    try:
        return Outgoing.build(**kwargs)
    except ValueError as exc:
        raise SendError(str(exc)) from exc


if TYPE_CHECKING:

    def _conforms(handler: DaemonHandlerContext, source: DaemonSourceContext) -> None:
        # mypy proves here that the daemon's contexts implement the public protocols.
        _h: HandlerContext = handler
        _s: SourceContext = source
