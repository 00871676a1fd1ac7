"""A source's acknowledgement of one message, passed along beside it.

Invariant: the callback runs once, after every handler the message was routed
to settled it (handled, dropped, or dead-lettered and written), and never
after a release (shutdown left the message to be redelivered).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Ack"]


class Ack:
    """Counts a message's outstanding deliveries; calls ``callback`` when none are left.

    A source that must acknowledge upstream (a Redis stream) creates one per
    message and passes it along with the message — ``Dispatcher.dispatch(message,
    ack)``, ``HandlerRunner.accept_dead_letter(letter, ack)`` — never on the
    message itself (the same message object is shared by every handler). The
    router's fan-out adds the number of targets to ``pending``; each target's
    runner keeps the ack next to the message (:attr:`HandlerRunner.acks`) and
    calls :meth:`done` once the message is handled, dead-lettered (after the
    dead-letter handler wrote it) or dropped, or :meth:`release` when shutdown
    leaves it to be redelivered.

    "Still working": a source whose upstream forgets unacknowledged messages
    after a while (an ack deadline) passes ``on_working``; :meth:`working` calls
    it, and a runner calls it for the messages its workers hold (see
    :meth:`HandlerRunner.still_working`).
    """

    __slots__ = ("callback", "on_working", "pending", "redeliver", "released")

    def __init__(
        self,
        callback: Callable[[], None],
        pending: int = 0,
        *,
        redeliver_on_shutdown: bool = False,
        on_working: Callable[[], None] | None = None,
    ) -> None:
        self.callback = callback
        self.pending = pending
        self.redeliver = redeliver_on_shutdown
        self.released = False
        self.on_working = on_working

    def working(self) -> None:
        """A handler still works on the message: let the source extend its deadline."""
        if self.on_working is not None and not self.released:
            self.on_working()

    def add(self, count: int) -> None:
        self.pending += count

    def done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.released:
            self.callback()

    def release(self) -> None:
        """One delivery was abandoned at shutdown: never acknowledge, let upstream redeliver."""
        self.released = True
        self.pending -= 1
