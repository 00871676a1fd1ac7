"""The delivery layer: queues, overflow policies, retries, timeouts, dead letters."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from wsroute import Message
from wsroute.config import HandlerSection
from wsroute.handler import Ack, HandlerRunner
from wsroute.testing import wait_until

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self, fail: int = 0, hang: bool = False, gate: anyio.Event | None = None):
        self.seen: list[Message] = []
        self.fail = fail
        self.hang = hang
        self.gate = gate
        self.calls = 0
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def handle(self, message: Message) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.hang:
            await anyio.sleep_forever()
        if self.calls <= self.fail:
            raise ValueError("boom")
        self.seen.append(message)

    async def stop(self) -> None:
        self.stopped = True


def section(**kw: Any) -> HandlerSection:
    kw.setdefault("plugin", "test")
    return HandlerSection(**kw)


def msg(seq: int, key: object = 1) -> Message:
    return Message("c", key, {"n": seq}, seq=seq)  # type: ignore[arg-type]


async def test_messages_are_handled_in_order_and_counted() -> None:
    rec = Recorder()
    runner = HandlerRunner("h", section(), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        assert rec.started
        for i in range(1, 101):
            assert runner.offer(msg(i))
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert [m.seq for m in rec.seen] == list(range(1, 101))
    assert runner.stats.handled == 100
    assert runner.balanced()
    assert rec.stopped


async def test_block_policy_refuses_when_full_and_put_waits_for_room() -> None:
    gate = anyio.Event()
    rec = Recorder(gate=gate)
    runner = HandlerRunner("h", section(queue=2, overflow="block"), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        assert runner.offer(msg(1))
        await wait_until(lambda: rec.calls == 1)  # taken by the worker, now in flight
        assert runner.offer(msg(2))
        assert runner.offer(msg(3))
        assert not runner.offer(msg(4))  # full: backpressure
        assert runner.stats.received == 3
        assert runner.balanced()
        done = anyio.Event()

        async def put() -> None:
            await runner.put(msg(4))
            done.set()

        tg.start_soon(put)
        await anyio.sleep(0.05)
        assert not done.is_set()
        gate.set()
        await wait_until(done.is_set)
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert [m.seq for m in rec.seen] == [1, 2, 3, 4]
    assert runner.stats.dropped == 0
    assert runner.balanced()


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop-oldest", [1, 4, 5]), ("drop-newest", [1, 2, 3])]
)
async def test_drop_policies_drop_and_count(policy: str, kept: list[int]) -> None:
    gate = anyio.Event()
    rec = Recorder(gate=gate)
    runner = HandlerRunner("h", section(queue=2, overflow=policy), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(lambda: rec.calls == 1)
        for i in range(2, 6):
            assert runner.offer(msg(i))
        assert runner.stats.dropped == 2
        assert runner.balanced()
        gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert [m.seq for m in rec.seen] == kept
    assert runner.stats.received == 5
    assert runner.balanced()


async def test_retries_then_success() -> None:
    rec = Recorder(fail=2)
    runner = HandlerRunner("h", section(retries=3), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert rec.calls == 3
    assert runner.stats.handled == 1
    assert runner.stats.failures == 2


async def test_exhausted_retries_dead_letter_with_reason() -> None:
    dlq_rec = Recorder()
    dlq = HandlerRunner("dlq", section(), dlq_rec)
    rec = Recorder(fail=100)
    runner = HandlerRunner("h", section(retries=1), rec)
    runner.dead_letter = dlq
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        runner.offer(msg(7))
        await wait_until(lambda: runner.idle() and dlq.idle() and dlq_rec.seen)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    letter = dlq_rec.seen[0]
    assert letter.seq == 7
    assert letter.dead_letter is not None
    assert letter.dead_letter.reason == "handler_error"
    assert letter.dead_letter.handler == "h"
    assert letter.dead_letter.attempts == 2
    assert "ValueError: boom" in (letter.dead_letter.error or "")
    assert runner.stats.dead_lettered == 1
    assert runner.balanced()
    assert dlq.balanced()


async def test_a_hanging_handler_times_out_into_the_dead_letter_handler() -> None:
    dlq_rec = Recorder()
    dlq = HandlerRunner("dlq", section(), dlq_rec)
    runner = HandlerRunner("h", section(timeout=0.05, retries=0), Recorder(hang=True))
    runner.dead_letter = dlq
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(lambda: bool(dlq_rec.seen))
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert dlq_rec.seen[0].dead_letter.reason == "timeout"  # type: ignore[union-attr]
    assert runner.stats.timeouts == 1


async def test_stop_workers_dead_letters_queued_and_in_flight() -> None:
    dlq_rec = Recorder()
    dlq = HandlerRunner("dlq", section(), dlq_rec)
    runner = HandlerRunner("h", section(timeout=0), Recorder(hang=True))
    runner.dead_letter = dlq
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        for i in range(1, 6):
            runner.offer(msg(i))
        await wait_until(lambda: runner.queued == 4)
        await runner.stop_workers("shutdown")
        await wait_until(dlq.idle)
        await dlq.stop_workers("shutdown")
    assert sorted(m.seq for m in dlq_rec.seen) == [1, 2, 3, 4, 5]
    assert {m.dead_letter.reason for m in dlq_rec.seen} == {"shutdown"}  # type: ignore[union-attr]
    assert runner.stats.dead_lettered == 5
    assert runner.balanced()


async def test_without_dead_letter_handler_the_loss_is_logged_and_counted() -> None:
    from structlog.testing import capture_logs

    runner = HandlerRunner("h", section(retries=0), Recorder(fail=1))
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            runner.offer(msg(3))
            await wait_until(runner.idle)
            await runner.stop_workers("shutdown")
    assert runner.stats.lost == 1
    assert runner.stats.dead_lettered == 1
    lost = [e for e in logs if e["event"] == "message_lost"]
    assert lost
    assert lost[0]["seq"] == 3
    assert lost[0]["reason"] == "handler_error"


async def test_concurrency_runs_messages_in_parallel() -> None:
    gate = anyio.Event()
    rec = Recorder(gate=gate)
    runner = HandlerRunner("h", section(concurrency=3), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        for i in range(1, 4):
            runner.offer(msg(i))
        await wait_until(lambda: rec.calls == 3)  # all three in flight at once
        assert runner.in_flight == 3
        gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert sorted(m.seq for m in rec.seen) == [1, 2, 3]


async def test_sync_handler_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    class Blocking:
        def handle(self, message: Message) -> None:
            threads.append(threading.get_ident())
            time.sleep(0.2)

    runner = HandlerRunner("h", section(), Blocking())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        tg.start_soon(ticker)
        runner.offer(msg(1))
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
        tg.cancel_scope.cancel()
    assert threads
    assert threads[0] != loop_thread
    assert ticks >= 5  # the loop kept running while the handler slept


async def test_ack_fires_once_every_delivery_settled() -> None:
    acked: list[int] = []
    a, b = Recorder(), Recorder(fail=100)
    ra = HandlerRunner("a", section(), a)
    rb = HandlerRunner("b", section(retries=0), b)
    dlq_rec = Recorder()
    dlq = HandlerRunner("dlq", section(), dlq_rec)
    rb.dead_letter = dlq
    async with anyio.create_task_group() as tg:
        for r in (dlq, ra, rb):
            await tg.start(r.run)
        m = msg(1)
        ack = Ack(lambda: acked.append(1), pending=2)
        ra.acks[id(m)] = rb.acks[id(m)] = ack  # passed along, never set on the message
        ra.offer(m)
        rb.offer(m)
        await wait_until(lambda: bool(dlq_rec.seen))
        await wait_until(dlq.idle)
        for r in (ra, rb, dlq):
            await r.stop_workers("shutdown")
    assert acked == [1]  # once, after the dead letter was handled
    assert not ra.acks
    assert not rb.acks
    assert not dlq.acks  # every runner gave its acknowledgement back


async def test_a_timed_out_attempt_is_retried_and_other_workers_go_on() -> None:
    class HangOnce:
        def __init__(self) -> None:
            self.calls: dict[int, int] = {}
            self.seen: list[int] = []

        async def handle(self, message: Message) -> None:
            self.calls[message.seq] = self.calls.get(message.seq, 0) + 1
            if message.seq == 1 and self.calls[1] == 1:
                await anyio.sleep_forever()  # only the first attempt of message 1 hangs
            self.seen.append(message.seq)

    handler = HangOnce()
    runner = HandlerRunner("h", section(timeout=0.1, retries=2, concurrency=2), handler)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        for i in range(1, 6):
            runner.offer(msg(i))
        await wait_until(lambda: len(handler.seen) == 5)
        await runner.stop_workers("shutdown")
    assert handler.seen[-1] == 1  # retried after its timeout, the others went on meanwhile
    assert handler.calls[1] == 2
    assert runner.stats.timeouts == 1
    assert runner.stats.handled == 5
    assert runner.balanced()
