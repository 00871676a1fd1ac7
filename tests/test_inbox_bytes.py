"""The inbox's high-water mark counts bytes as well as messages (both transports).

A real TCP connection on 127.0.0.1 is the socket the inbox pauses and
resumes; the reader is a real task that a test holds back with a gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from wsroute.testing import wait_until
from wsroute.transport import HIGH_WATER, HIGH_WATER_BYTES, Data, Inbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def socket_transport() -> AsyncIterator[asyncio.ReadTransport]:
    """The client side of a real loopback TCP connection, as a ReadTransport."""

    accepted: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield writer.transport  # type: ignore[misc]
    finally:
        writer.close()
        await wait_until(lambda: bool(accepted))
        for peer in accepted:
            peer.close()
            await peer.wait_closed()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_a_few_large_messages_pause_the_socket_before_the_message_count_would() -> None:
    inbox = Inbox()
    seen: list[int] = []
    gate = anyio.Event()
    size = 100 * 1024

    async def handle(batch: list[Data]) -> None:
        seen.extend(len(data) for data in batch)
        await gate.wait()

    async with socket_transport() as transport, anyio.create_task_group() as tg:
        inbox.socket = transport
        tg.start_soon(inbox.drain, handle, lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        inbox.push(b"x" * size)  # handed over; its handler then waits on the gate
        await wait_until(lambda: seen == [size], step=0.001)
        count = 0
        while not inbox.paused:
            count += 1
            inbox.push(b"y" * size)
            assert count < HIGH_WATER
        assert count == HIGH_WATER_BYTES // size + 1  # the first message over the mark
        assert inbox.size == count * size
        assert not transport.is_reading()
        gate.set()
        await wait_until(lambda: len(seen) == count + 1, step=0.001)
        assert inbox.size == 0
        assert not inbox.paused
        assert transport.is_reading()
        tg.cancel_scope.cancel()


async def test_many_small_messages_still_pause_at_the_message_count() -> None:
    inbox = Inbox()
    gate = anyio.Event()

    async def handle(batch: list[Data]) -> None:
        await gate.wait()

    async with socket_transport() as transport, anyio.create_task_group() as tg:
        inbox.socket = transport
        tg.start_soon(inbox.drain, handle, lambda: False)
        await wait_until(lambda: inbox.waiter is not None, step=0.001)
        inbox.push(b"first")
        for _ in range(HIGH_WATER + 1):
            inbox.push(b"tiny")
        assert inbox.paused
        assert inbox.size == 4 * (HIGH_WATER + 1)
        gate.set()
        await wait_until(lambda: not inbox.messages, step=0.001)
        assert inbox.size == 0
        tg.cancel_scope.cancel()


async def test_discard_forgets_the_waiting_bytes() -> None:
    inbox = Inbox()
    inbox.push("text counts its characters")
    assert inbox.size == len("text counts its characters")
    inbox.discard()
    assert (inbox.size, len(inbox.messages)) == (0, 0)
