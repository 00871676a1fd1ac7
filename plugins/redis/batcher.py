"""Many concurrent calls, one round trip: the ``redis`` sink's :class:`Batcher`.

With ``concurrency = N`` and no ``batch`` key the daemon's workers call a sink's
``handle()`` at once; the sink submits each call's item here and one of the
callers flushes everything waiting in one pipelined round trip. (With ``batch``
the daemon hands the sink whole lists through ``handle_batch`` instead.)

Invariants: one flush runs at a time; items are flushed oldest first, at most
``max_items`` per flush; every caller returns only once its own item was
flushed (its result, or its error raised); an item whose caller was cancelled
before it was sent is never sent; a flush that raised fails every item in it
with :class:`PipelineError`, and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from wsroute import WsrouteError

__all__ = ["Batcher", "PipelineError"]


class PipelineError(WsrouteError, RuntimeError):
    """The pipeline round trip a message was part of failed (another message's call saw why)."""


class _Slot:
    __slots__ = ("done", "error", "item", "result", "sent")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.sent = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class Batcher:
    """Collects concurrent :meth:`submit` calls into one ``flush`` of everything waiting.

    One flush runs at a time. A caller that finds none running sends up to
    ``max_items`` of the items queued so far, oldest first, after letting the
    callers the last flush woke queue their next items. The others wait for that
    flush to end (all woken at once, not handed a lock one by one) and find their
    item done, or one of them sends the next batch. ``flush(items)`` returns one result per item, an
    ``Exception`` instance for an item that failed on its own.
    """

    def __init__(
        self,
        flush: Callable[[list[Any]], Awaitable[Sequence[Any]]],
        *,
        max_items: int = 0,
    ) -> None:
        self._flush = flush
        self._max = max_items if max_items > 0 else 1 << 62
        self._sending: anyio.Event | None = None  # set when the flush under way ends
        self._queue: list[_Slot] = []
        self.flushes = 0

    async def submit(self, item: Any) -> Any:
        """Send ``item`` with whatever else is waiting; its result, or raise its error."""
        slot = _Slot(item)
        self._queue.append(slot)
        try:
            while not slot.done:
                if self._sending is not None:
                    await self._sending.wait()
                    continue
                self._sending = anyio.Event()
                try:
                    await self._fill()
                    failure = await self._send()
                finally:
                    ended, self._sending = self._sending, None
                    ended.set()
                if failure is not None and slot.sent:
                    raise failure
        except BaseException:
            if not slot.sent:  # cancelled while waiting: do not send it behind our back
                self._queue.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def _fill(self) -> None:
        """Let the callers the last flush woke take their next item first: they join
        this batch instead of waiting for the next."""
        if len(self._queue) < self._max:
            await anyio.lowlevel.checkpoint()

    async def _send(self) -> Exception | None:
        """Flush the oldest ``max_items``; the flush's own exception if it raised one."""
        batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        self.flushes += 1
        for slot in batch:
            slot.sent = True
        try:
            results = await self._flush([slot.item for slot in batch])
        except BaseException as exc:
            for slot in batch:
                slot.done = True
                failure = PipelineError(f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                slot.error = failure
            if not isinstance(exc, Exception):
                raise  # cancelled: the caller goes too
            return exc
        for slot, result in zip(batch, results, strict=True):
            slot.done = True
            if isinstance(result, Exception):
                slot.error = result
            else:
                slot.result = result
        return None
