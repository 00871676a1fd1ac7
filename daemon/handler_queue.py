"""A handler's bounded queue: its two bounds, its overflow policy, its accounting.

A queue is bounded twice: ``queue`` messages and ``queue_bytes`` bytes, a
message's bytes being :func:`~wsroute.budget.message_size` — three times the
length of its raw frame, an O(1) estimate that never walks the body. It takes a
message while it holds fewer than both (so one message larger than
``queue_bytes`` still goes through, alone), and ``overflow`` applies when either
bound is reached: ``block`` refuses (the reader waits: backpressure),
``drop-newest`` drops the message offered, ``drop-oldest`` the oldest queued
until the queue is below both bounds again. Every queued byte is also counted
in a :class:`~wsroute.budget.MemoryBudget` shared by all handlers, the
daemon-wide ``memory_budget``: the dispatcher pauses readers above it. Both are
kept in *raw* units (the frames' lengths, the limits divided by three): one
``len()`` and two integer adds per message — per batch, for a socket read's.

Offering never waits (:meth:`HandlerQueue.offer`, :meth:`~HandlerQueue.offer_many`);
the runner's workers take messages out and wake up once when it turns non-empty.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from structlog.typing import FilteringBoundLogger

from .ack import Ack
from .budget import MemoryBudget
from .config import HandlerSection
from .plugin import Message

__all__ = ["HandlerQueue", "HandlerStats"]

_raw = operator.attrgetter("raw")


@dataclass
class HandlerStats:
    """Counters of one handler; ``in_flight`` comes from the runner."""

    received: int = 0
    handled: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    failures: int = 0  # failed attempts, retried or not
    retries: int = 0  # failed attempts followed by another attempt
    timeouts: int = 0
    lost: int = 0  # dead letters no dead-letter handler could take (logged)
    released: int = 0  # source messages left unacknowledged at shutdown, redelivered later


class HandlerQueue:
    """The queue half of a :class:`~wsroute.handler.HandlerRunner`."""

    log: FilteringBoundLogger

    def __init__(self, section: HandlerSection, budget: MemoryBudget | None) -> None:
        self.stats = HandlerStats()
        self._queue: deque[Message] = deque()
        #: The acknowledgement of each queued or in-flight message that has one (a
        #: source's), by ``id(message)``: set by whoever queues the message, taken
        #: when it settles. Empty for connections: one truthiness test per message.
        self.acks: dict[int, Ack] = {}
        #: Raw frame bytes queued now (``queued_bytes`` is 3x).
        self.queued_raw = 0
        #: The daemon-wide budget these bytes count in (its own, unlimited, if none given).
        self.budget = MemoryBudget() if budget is None else budget
        self._limit = section.queue
        self._raw_limit = max(1, section.queue_bytes // 3)
        self._policy = section.overflow
        # Set when a message is queued; workers with an empty queue wait on it; ``_item_set``
        # mirrors it. An asyncio.Event, cleared and reused: at moderate rates a worker
        # sleeps after every message, and a new anyio.Event per wake-up (its backend
        # looked up each time) cost ~3 µs of a ~50 µs frame.
        self._item = asyncio.Event()
        self._item_set = False
        self._space: anyio.Event | None = None
        self._accepting = True
        self._closed_for = "shutdown"
        self._drop_logged_at = 0.0
        #: The API's ``/tap`` hook while someone taps the daemon (``None`` otherwise):
        #: the dead letters this runner takes are shown to taps on it, with their reason.
        self.tap: Callable[[Message, tuple[Any, ...]], None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued now, estimated (:func:`~wsroute.budget.message_size` of each)."""
        return self.queued_raw * 3

    @property
    def full(self) -> bool:
        """The queue holds ``queue`` messages or ``queue_bytes`` bytes or more (dead
        letters may pass the limits)."""
        return len(self._queue) >= self._limit or self.queued_raw >= self._raw_limit

    @property
    def drops_next(self) -> bool:
        """Full under ``drop-oldest``/``drop-newest``: the next offer drops a message."""
        return self._policy != "block" and self._accepting and self.full

    def offer(self, message: Message) -> bool:
        """Queue a message without waiting. ``False``: full under ``block``; call again later.

        Under ``drop-oldest``/``drop-newest`` a full queue drops a message (counted,
        logged at most once a second) and this returns ``True``.
        """
        queue = self._queue
        if len(queue) >= self._limit or self.queued_raw >= self._raw_limit:
            if self._policy == "block" or not self._accepting:
                return False
            self.stats.received += 1
            if self._policy == "drop-newest":
                self._drop(message)
                return True
            self._drop_oldest()
        else:
            self.stats.received += 1
        size = len(message.raw)
        queue.append(message)
        self.queued_raw += size
        self.budget.raw += size
        if not self._item_set:
            self._item_set = True
            self._item.set()
        return True

    def offer_many(self, messages: list[Message]) -> int:
        """:meth:`offer` for each of ``messages`` in order, in one step; how many were taken.

        Fewer than all: the queue filled under ``block`` (the rest wait, in order).
        One extend, one update of the accounts and at most one wake-up of the
        workers when every message fits, which is what a socket read's messages do
        while the handler keeps up.
        """
        queue = self._queue
        count = len(messages)
        if not count:
            return 0
        size = sum(map(len, map(_raw, messages)))
        # Every message fits when the last one would: fewer than `queue` messages and
        # `queue_bytes` bytes queued before it (offer()'s test, for the last one).
        if (
            len(queue) + count <= self._limit
            and self.queued_raw + size - len(messages[-1].raw) < self._raw_limit
        ):
            queue.extend(messages)
            self.stats.received += count
            self.queued_raw += size
            self.budget.raw += size
            if not self._item_set:
                self._item_set = True
                self._item.set()
            return count
        offer = self.offer
        for taken, message in enumerate(messages):
            if not offer(message):
                return taken
        return count

    def room_for(self, messages: list[Message], size: int) -> int:
        """How many of ``messages`` (``size``: their raw bytes) :meth:`offer` would take
        now, one after the other, before it refuses one (all, unless ``block``)."""
        count = len(messages)
        queued = len(self._queue)
        raw = self.queued_raw
        if (self._policy != "block" and self._accepting) or (
            queued + count <= self._limit and raw + size - len(messages[-1].raw) < self._raw_limit
        ):
            return count
        for fit, message in enumerate(messages):
            if queued >= self._limit or raw >= self._raw_limit:
                return fit
            queued += 1
            raw += len(message.raw)
        return count

    async def wait_space(self) -> None:
        """Wait until the queue has room again (or the runner stops accepting)."""
        if len(self._queue) < self._limit and self.queued_raw < self._raw_limit:
            return
        if self._space is None:
            self._space = anyio.Event()
        await self._space.wait()

    def _room(self) -> None:
        """Messages were taken out: a reader waiting for room may go on."""
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    async def wait_below_limit(self) -> None:
        """Backpressure for dead letters: wait until the queue is below its limit again.

        Dead letters are queued past the limit (never dropped), so whoever
        produces them — the reader for undecodable frames, a failing handler's
        worker — waits here; a flood of them cannot grow the queue without bound.
        Returns once the runner stops accepting (shutdown).
        """
        while self.full and self._accepting:
            await self.wait_space()

    def accept_dead_letter(self, letter: Message, ack: Ack | None = None) -> bool:
        """Queue a dead letter even past the queue limit: dead letters are never dropped.

        ``ack``: the acknowledgement the letter's message carried, settled once this
        handler wrote it. ``False`` (and ``ack`` untouched) when not accepting.
        """
        if not self._accepting:
            return False
        if ack is not None:
            self.acks[id(letter)] = ack
        self.stats.received += 1
        size = len(letter.raw)
        self._queue.append(letter)
        self.queued_raw += size
        self.budget.raw += size
        if not self._item_set:
            self._item_set = True
            self._item.set()
        if self.tap is not None:
            self.tap(letter, (self,))
        return True

    def _unqueue_oldest(self) -> Message:
        """Take the oldest queued message out, and its bytes out of the accounts."""
        message = self._queue.popleft()
        size = len(message.raw)
        self.queued_raw -= size
        self.budget.raw -= size
        return message

    def _resync(self) -> None:
        """The queue is empty: its bytes are 0. Only a message whose ``raw`` was
        changed while queued (they are read-only) leaves anything to correct."""
        self.budget.raw -= self.queued_raw
        self.queued_raw = 0

    def _drop_oldest(self) -> None:
        """drop-oldest: drop until below both bounds (a message is about to be queued)."""
        queue = self._queue
        while queue and (len(queue) >= self._limit or self.queued_raw >= self._raw_limit):
            self._drop(self._unqueue_oldest())

    def _settle(self, message: Message) -> None:
        """The message left this handler for good (handled, dropped): acknowledge it."""
        if self.acks:
            ack = self.acks.pop(id(message), None)
            if ack is not None:
                ack.done()

    def _drop(self, message: Message) -> None:
        self.stats.dropped += 1
        self.budget.overflowed = True  # the reader gives way to the workers once
        self._settle(message)
        now = time.monotonic()
        if now - self._drop_logged_at >= 1.0:
            self._drop_logged_at = now
            self.log.warning(
                "message_dropped",
                policy=self._policy,
                connection=message.connection,
                seq=message.seq,
                dropped_total=self.stats.dropped,
            )
