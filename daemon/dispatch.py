"""The glue between sources of messages and handler queues.

:class:`Dispatcher` takes each decoded message, asks the :class:`~wsroute.router.Router`
for its handlers, and offers it to each handler's queue without awaiting. Only
when a ``block`` queue is full, or the bytes queued in all handlers reached the
daemon-wide ``memory_budget`` (a :class:`~wsroute.handler.MemoryBudget`), does
it return an awaitable, which the reader awaits: backpressure. Decode failures
and unmatched messages are counted here, per connection, and dead-lettered or
handed to the ``unmatched`` handler.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import structlog

from .ack import Ack
from .budget import MemoryBudget
from .exceptions import DecodeError
from .handler import HandlerRunner
from .plugin import DeadLetter, Frame, Message
from .router import Router, is_reserved_key

__all__ = ["Dispatcher"]

log = structlog.get_logger("wsroute.dispatch")

_raw = operator.attrgetter("raw")


class Dispatcher:
    """Routes messages to handler runners; swap :attr:`router` to apply a new route table."""

    def __init__(
        self,
        router: Router[HandlerRunner],
        dead_letter: HandlerRunner | None = None,
        *,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.router = router
        self.dead_letter = dead_letter
        #: Called with each routed message and its targets while someone taps the
        #: daemon (the API's /tap); ``None`` otherwise: one attribute check per message.
        self.tap: Callable[[Message, tuple[HandlerRunner, ...]], None] | None = None
        #: The daemon-wide memory budget; the runners must count in the same one.
        self.budget = MemoryBudget() if budget is None else budget
        self.unmatched: Counter[str] = Counter()
        self.decode_errors: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self._unmatched_logged_at = 0.0

    def dispatch(self, message: Message, ack: Ack | None = None) -> Awaitable[None] | None:
        """Offer ``message`` to every handler its routes name; an awaitable if one is full.

        Or when the memory budget is reached: the message is queued, and the
        awaitable holds the reader (or source) back until the handlers drained
        below the budget. ``ack``: a source's acknowledgement of the message,
        kept by each target runner next to it and settled by every one of them.
        """
        # _offer(), inlined for a matched message: this runs once per frame.
        targets = self.router.lookup(message.connection, message.key)
        if self.tap is not None:
            self.tap(message, targets)
        blocked: list[HandlerRunner] | None = None
        if targets:
            if ack is not None:
                _track(message, ack, targets)
            for runner in targets:
                if not runner.offer(message):
                    if blocked is None:
                        blocked = [runner]
                    else:
                        blocked.append(runner)
        else:
            blocked = self._offer(message, targets, ack)  # unmatched: the slow path
        if blocked is not None:
            return self._wait(message, blocked)
        budget = self.budget
        if budget.raw >= budget.raw_limit:
            return budget.wait()
        if budget.overflowed:
            # A queue dropped a message: its handler is behind. The reader yields
            # once, so that the handler's worker runs now rather than after the
            # rest of the socket read (a drop-oldest handler under a flood gets
            # its share of the loop).
            budget.overflowed = False
            return asyncio.sleep(0)
        return None

    def dispatch_many(self, messages: list[Message]) -> tuple[int, Awaitable[None]] | None:
        """:meth:`dispatch` for ``messages`` in order (a socket read's), in bulk.

        Consecutive messages with the same targets — a read's are mostly one key —
        go to each target's queue in one :meth:`~wsroute.handler.HandlerRunner.offer_many`.
        ``None`` when all were queued; else ``(count, awaitable)``: the first
        ``count`` were routed (the last of them may wait in the awaitable for room
        in a full ``block`` queue, as :meth:`dispatch`'s does) and the caller awaits
        it before it routes the rest. A drop makes it a yield to the loop, at the
        first message a full ``drop-*`` queue drops, as :meth:`dispatch` does. The
        memory budget is looked at once, after the read.
        """
        lookup = self.router.lookup
        tap = self.tap
        total = len(messages)
        position = 0
        while position < total:
            first = messages[position]
            key = first.key
            connection = first.connection
            targets = lookup(connection, key)
            if not targets:  # unmatched: the slow path, one message
                if tap is not None:
                    tap(first, targets)
                position += 1
                blocked = self._offer(first, targets)
                if blocked is not None:
                    return position, self._wait(first, blocked)
                continue
            end = position + 1
            while end < total:
                message = messages[end]
                if message.key is not key or message.connection is not connection:
                    if lookup(message.connection, message.key) is not targets:
                        break
                    key, connection = message.key, message.connection
                end += 1
            run = messages[position:end] if position or end < total else messages
            if len(run) > 1 and any(runner.drops_next for runner in targets):
                # A handler that is behind drops one: the reader gives way to it before
                # it routes the rest of the read (see dispatch()), as frame by frame.
                run = run[:1]
            waits_in: list[HandlerRunner] = []
            if len(targets) == 1:
                runner = targets[0]
                taken = runner.offer_many(run)
                if taken < len(run):  # the message after them waits for room
                    run = run[: taken + 1]
                    waits_in.append(runner)
            else:
                run = _cut(run, targets)
                for runner in targets:
                    if runner.offer_many(run) < len(run):
                        waits_in.append(runner)
            if tap is not None:
                for message in run:
                    tap(message, targets)
            position += len(run)
            if waits_in:
                return position, self._wait(run[-1], waits_in)
            if self.budget.overflowed and position < total:
                self.budget.overflowed = False
                return position, asyncio.sleep(0)
        budget = self.budget
        if budget.raw >= budget.raw_limit:
            return total, budget.wait()
        if budget.overflowed:  # see dispatch(): the handler that dropped runs first
            budget.overflowed = False
            return total, asyncio.sleep(0)
        return None

    def emit(self, message: Message) -> Awaitable[None] | None:
        """:meth:`dispatch` without the memory budget: for messages a handler emits.

        A handler's worker must not wait for the budget: the bytes it waits on
        may be in its own queue. (It still waits for room in a full ``block``
        queue, as before.)
        """
        targets = self.router.lookup(message.connection, message.key)
        if self.tap is not None:
            self.tap(message, targets)
        blocked = self._offer(message, targets)
        if blocked is None:
            return None
        return self._put(message, blocked)

    def _offer(
        self, message: Message, targets: tuple[HandlerRunner, ...], ack: Ack | None = None
    ) -> list[HandlerRunner] | None:
        """Offer to ``targets`` (the router's answer), or to ``unmatched`` when there are
        none; the ``block`` runners that had no room, if any."""
        if not targets:
            # Includes a frame whose key begins with `$`: never routed, it is unmatched.
            self.unmatched[message.connection] += 1
            targets = self.router.unmatched
            if not targets:
                self._log_unmatched(message)
                if ack is not None:  # nothing to wait for
                    ack.callback()
                return None
        if ack is not None:
            _track(message, ack, targets)
        return _offer_each(message, targets)

    def dispatch_lifecycle(self, message: Message) -> Awaitable[None] | None:
        """Offer a ``$connected``/``$disconnected`` message to the routes that name its key.

        Only the daemon's connections call this; a frame with such a key goes
        through :meth:`dispatch` and is unmatched. Nothing is counted as
        unmatched when no route wants a lifecycle message.
        """
        targets = self.router.lookup_lifecycle(message.connection, str(message.key))
        blocked = _offer_each(message, targets)
        return None if blocked is None else self._wait(message, blocked)

    async def _wait(self, message: Message, blocked: list[HandlerRunner]) -> None:
        await self._put(message, blocked)
        budget = self.budget
        if budget.raw >= budget.raw_limit:
            await budget.wait()

    async def _put(self, message: Message, blocked: list[HandlerRunner]) -> None:
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
        budget = self.budget
        if budget.raw >= budget.raw_limit:
            return budget.wait()
        return None

    def _log_unmatched(self, message: Message) -> None:
        now = time.monotonic()
        if now - self._unmatched_logged_at >= 1.0:
            self._unmatched_logged_at = now
            log.info(
                "message_unmatched",
                connection=message.connection,
                key=message.key,
                seq=message.seq,
                unmatched_total=self.unmatched[message.connection],
                reserved=is_reserved_key(message.key) or None,
            )


def _offer_each(message: Message, targets: tuple[HandlerRunner, ...]) -> list[HandlerRunner] | None:
    """Offer to every target; the ``block`` runners that had no room, if any.

    (:meth:`Dispatcher.dispatch` has this loop inlined: it runs once per frame.)
    """
    blocked: list[HandlerRunner] | None = None
    for runner in targets:
        if not runner.offer(message):
            if blocked is None:
                blocked = [runner]
            else:
                blocked.append(runner)
    return blocked


def _cut(run: list[Message], targets: tuple[HandlerRunner, ...]) -> list[Message]:
    """The part of ``run`` that is read now: up to the first message a ``block`` queue of
    ``targets`` has no room for (included: it waits for room), as :meth:`Dispatcher.dispatch`
    would have read them one by one. Every other target takes all of it."""
    size = sum(map(len, map(_raw, run)))
    cut = len(run)
    for runner in targets:
        cut = min(cut, runner.room_for(run, size) + 1)
    return run if cut >= len(run) else run[:cut]


def _track(message: Message, ack: Ack, targets: tuple[HandlerRunner, ...]) -> None:
    """Hand each target the message's acknowledgement, before it is offered (an
    offer may drop it at once, and settles it then)."""
    ack.add(len(targets))
    key = id(message)
    for runner in targets:
        runner.acks[key] = ack
