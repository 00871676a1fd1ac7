"""The glue between sources of messages and handler queues.

:class:`Dispatcher` takes each decoded message, asks the :class:`~wsroute.router.Router`
for its handlers, and offers it to each handler's queue without awaiting. Only
when a ``block`` queue is full does it return an awaitable, which the reader
awaits: backpressure. Decode failures and unmatched messages are counted here,
per connection, and dead-lettered or handed to the ``unmatched`` handler.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable

import anyio
import structlog

from .exceptions import DecodeError
from .handler import HandlerRunner
from .plugin import DeadLetter, Frame, Message
from .router import Router, is_reserved_key

__all__ = ["Dispatcher"]

log = structlog.get_logger("wsroute.dispatch")


class Dispatcher:
    """Routes messages to handler runners; swap :attr:`router` to apply a new route table."""

    def __init__(
        self, router: Router[HandlerRunner], dead_letter: HandlerRunner | None = None
    ) -> None:
        self.router = router
        self.dead_letter = dead_letter
        self.unmatched: Counter[str] = Counter()
        self.decode_errors: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self._unmatched_logged_at = 0.0

    def dispatch(self, message: Message) -> Awaitable[None] | None:
        """Offer ``message`` to every handler its routes name; an awaitable if one is full."""
        targets = self.router.lookup(message.connection, message.key)
        if not targets:
            if is_reserved_key(message.key):
                _settle_now(message)
                return None
            self.unmatched[message.connection] += 1
            targets = self.router.unmatched
            if not targets:
                self._log_unmatched(message)
                _settle_now(message)
                return None
        ack = message._ack
        if ack is not None:
            ack.add(len(targets))
        blocked: list[HandlerRunner] | None = None
        for runner in targets:
            if not runner.offer(message):
                if blocked is None:
                    blocked = [runner]
                else:
                    blocked.append(runner)
        if blocked is None:
            return None
        return self._wait(message, blocked)

    async def _wait(self, message: Message, blocked: list[HandlerRunner]) -> None:
        for index, runner in enumerate(blocked):
            try:
                await runner.put(message)
            except anyio.get_cancelled_exc_class():
                # Cancelled (shutdown) while waiting for room in one queue: the handlers
                # further down the line were named by the routes too, and must account
                # for the message — queued if there is room now, else abandoned.
                for later in blocked[index + 1 :]:
                    if not later.offer(message):
                        later.stats.received += 1
                        later.abandon(message, "shutdown")
                raise

    def decode_failed(self, frame: Frame, error: DecodeError) -> Awaitable[None] | None:
        """Dead-letter an undecodable frame: its body is the raw frame.

        An awaitable when the dead-letter queue is over its limit: the reader
        awaits it (backpressure), as for a full ``block`` queue.
        """
        self.decode_errors[frame.connection] += 1
        letter = Message(
            frame.connection,
            None,
            frame.data,
            raw=frame.data,
            seq=frame.seq,
            received_at=frame.received_at,
            dead_letter=DeadLetter(reason="decode_error", error=str(error)),
        )
        target = self.dead_letter
        if target is None or not target.accept_dead_letter(letter):
            self.lost[frame.connection] += 1
            log.error(
                "message_lost",
                reason="decode_error",
                error=str(error),
                connection=frame.connection,
                seq=frame.seq,
                dead_letter=None,
            )
            return None
        if target.full:  # a flood of undecodable frames: hold the reader back
            return target.wait_below_limit()
        return None

    def _log_unmatched(self, message: Message) -> None:
        now = time.monotonic()
        if now - self._unmatched_logged_at >= 1.0:
            self._unmatched_logged_at = now
            log.debug(
                "message_unmatched",
                connection=message.connection,
                key=message.key,
                seq=message.seq,
                unmatched_total=self.unmatched[message.connection],
            )


def _settle_now(message: Message) -> None:
    ack = message._ack
    if ack is not None:
        ack.callback()
