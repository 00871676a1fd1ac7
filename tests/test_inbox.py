"""The reader's inbox (``wsroute.transport.Inbox``), driven as the transports drive it.

The callbacks run synchronously on the event loop, as a library's
``data_received`` does; the reader is a real task draining the inbox. The
transport tests cover the same paths end to end against real peers; these pin
the orderings that a socket cannot produce on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import anyio
import pytest

from wsroute.testing import wait_until
from wsroute.transport import YIELD_EVERY, Data, Inbox

pytestmark = pytest.mark.anyio


def deliver(inbox: Inbox, data: Data) -> None:
    """What a transport's per-frame callback does with a whole message."""
    inbox.push(data)


async def test_an_idle_reader_has_messages_handed_over_in_the_callback() -> None:
    inbox = Inbox()
    seen: list[Data] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.drain, seen.extend, lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        deliver(inbox, b"1")
        # Handled inside the callback: no task switch to the reader.
        assert seen == [b"1"]
        assert inbox.inline == YIELD_EVERY - 1
        tg.cancel_scope.cancel()


async def test_past_the_inline_budget_messages_queue_for_the_reader_in_order() -> None:
    inbox = Inbox()
    seen: list[Data] = []
    total = 3 * YIELD_EVERY + 5
    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.drain, seen.extend, lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        for n in range(total):  # one socket read: no await between them
            deliver(inbox, n.to_bytes(4, "big"))
        assert len(seen) == YIELD_EVERY  # the budget; the rest waits in the deque
        assert len(inbox.messages) == total - YIELD_EVERY
        assert inbox.inline == 0
        await wait_until(lambda: len(seen) == total, step=0.001)
        assert [int.from_bytes(b, "big") for b in seen] == list(range(total))
        tg.cancel_scope.cancel()


async def test_a_busy_reader_gets_messages_through_the_deque_not_inline() -> None:
    inbox = Inbox()
    seen: list[Data] = []
    release = asyncio.Event()

    def handle(batch: list[Data]) -> Awaitable[None] | None:
        seen.extend(batch)
        return wait_for_release() if b"hold" in batch else None

    async def wait_for_release() -> None:
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.drain, handle, lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        deliver(inbox, b"hold")  # handed over inline; the reader must wait on it
        assert inbox.pending is not None
        deliver(inbox, b"after")  # must not overtake: queued
        assert seen == [b"hold"]
        assert list(inbox.messages) == [b"after"]
        await wait_until(lambda: inbox.pending is None, step=0.001)
        assert seen == [b"hold"]
        release.set()
        await wait_until(lambda: seen == [b"hold", b"after"], step=0.001)
        tg.cancel_scope.cancel()


async def test_a_handler_error_in_the_callback_is_raised_by_the_reader() -> None:
    inbox = Inbox()

    def handle(batch: list[Data]) -> None:
        raise ValueError(f"bug on {batch[0]!r}")

    async def reader() -> None:
        await inbox.drain(handle, lambda: False)

    task = asyncio.ensure_future(reader())
    await wait_until(lambda: inbox.waiter is not None, step=0.001)
    deliver(inbox, b"x")  # the callback itself does not raise
    with pytest.raises(ValueError, match="bug on b'x'"):
        await asyncio.wait_for(task, 5)


async def test_a_stop_right_after_a_handover_still_awaits_what_was_handed_over() -> None:
    """The wait for queue room must run (and see the cancellation, and dead-letter)
    even when the reader was cancelled before it got to it."""
    inbox = Inbox()
    outcome: list[str] = []

    async def wait_for_room() -> None:
        try:
            await asyncio.Event().wait()  # the queue never has room
        except asyncio.CancelledError:
            outcome.append("cancelled while waiting: dead-lettered")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.drain, lambda batch: wait_for_room(), lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        # A stop cancels the waiting reader; before the reader runs again, a frame
        # already read is handed over inline (the budget is given back only when the
        # reader runs) with a wait for queue room.
        tg.cancel_scope.cancel()
        deliver(inbox, b"blocked")
    assert outcome == ["cancelled while waiting: dead-lettered"]
    assert inbox.pending is None
    assert inbox.inline == 0


async def test_a_wake_up_without_a_message_ends_the_inline_budget() -> None:
    inbox = Inbox()
    seen: list[Data] = []
    finished = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.drain, seen.extend, lambda: finished)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        finished = True
        inbox.wake()  # the connection was lost
        assert inbox.inline == 0
        deliver(inbox, b"late")  # after the loss: queued, not handled in the callback
        assert seen == []
    assert seen == [b"late"]  # the reader drains what waits before it returns
