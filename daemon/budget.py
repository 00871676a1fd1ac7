"""Memory bounds in bytes: the estimate per message, and the daemon-wide budget.

A queued message is taken to hold :func:`message_size` bytes — three times its
raw frame, O(1), never a walk of its body. Each handler queue is bounded by
``queue_bytes`` (kept by its :class:`~wsroute.handler.HandlerRunner`), and all
queues together by one :class:`MemoryBudget` (``[daemon] memory_budget``):
above it the dispatcher pauses every reader; nothing is dropped. On the
per-message path both count raw frame lengths (the limits divided by three).
"""

from __future__ import annotations

import asyncio
import sys
import time

import structlog

from .plugin import Message

__all__ = ["BUDGET_POLL", "MemoryBudget", "message_size"]

log = structlog.get_logger("wsroute.handler")

#: How often a reader paused by the memory budget looks whether it may go on.
BUDGET_POLL = 0.005


def message_size(message: Message) -> int:
    """The bytes a queued message is taken to hold: O(1), the body is not walked.

    The raw frame once and the decoded body estimated at twice the frame:
    ``3 × len(raw)`` (``len`` of a ``str`` frame counts characters). An
    estimate: a JSON body of many small numbers or objects takes more than
    twice its text, a long string or bytes less. The message objects
    themselves (a few hundred bytes each) are bounded by the ``queue`` count;
    a message without a raw frame (``$connected``, most messages a handler
    emits) counts 0 here.

    Counted when a message enters a queue and again when it leaves, from the
    same immutable ``raw``: messages are read-only (the same object may sit in
    several queues).
    """
    return len(message.raw) * 3


class MemoryBudget:
    """The daemon-wide ``[daemon] memory_budget``: bytes queued in all handlers together.

    Every runner adds a message's :func:`message_size` to :attr:`total` when it
    queues it (once per queue: a message fanned out to 3 handlers counts 3
    times) and subtracts it when the message leaves the queue — taken by a
    worker, dropped, or dead-lettered at shutdown. Plain integer adds on the
    per-message path, no lock (one event loop). The dispatcher hands
    :meth:`wait` to a reader when :attr:`total` is at or above :attr:`limit`:
    the reader pauses until the handlers drained below it. Nothing is dropped.
    A paused reader looks again every :data:`BUDGET_POLL` seconds rather than
    being woken: the workers' per-message path stays two integer subtractions.
    """

    __slots__ = ("_logged_at", "overflowed", "pauses", "raw", "raw_limit")

    def __init__(self, limit: int | None = None) -> None:
        #: Raw frame bytes queued now, in all runners sharing this budget (the
        #: per-message unit: see :func:`message_size`).
        self.raw = 0
        #: The budget in raw frame bytes: ``memory_budget // 3``.
        self.raw_limit = sys.maxsize
        #: How many times a reader had to wait for the budget.
        self.pauses = 0
        #: A ``drop-oldest``/``drop-newest`` queue dropped a message since the
        #: dispatcher last looked: the reader then gives way to the handlers once
        #: (fairness under a flood), and clears it.
        self.overflowed = False
        self._logged_at = 0.0
        if limit is not None:
            self.set_limit(limit)

    @property
    def total(self) -> int:
        """Bytes queued now, in all runners sharing this budget (estimated)."""
        return self.raw * 3

    @property
    def limit(self) -> int:
        """The budget in bytes (unlimited, ``sys.maxsize``, for runners built alone)."""
        return self.raw_limit * 3 if self.raw_limit != sys.maxsize else sys.maxsize

    @property
    def exceeded(self) -> bool:
        return self.raw >= self.raw_limit

    def set_limit(self, limit: int) -> None:
        """Apply a new ``memory_budget`` (at start, and at a reload): paused readers
        see it within :data:`BUDGET_POLL`."""
        self.raw_limit = max(1, limit // 3)

    async def wait(self) -> None:
        """Wait until the bytes queued fall below the budget."""
        if self.raw < self.raw_limit:
            return
        self.pauses += 1
        while self.raw >= self.raw_limit:
            now = time.monotonic()
            if now - self._logged_at >= 1.0:
                self._logged_at = now
                log.warning(
                    "memory_budget_reached",
                    queued_bytes=self.total,
                    memory_budget=self.limit,
                    pauses=self.pauses,
                )
            await asyncio.sleep(BUDGET_POLL)
