"""Memory bounds: each handler queue's ``queue_bytes``, the daemon-wide ``memory_budget``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from wsroute import Message
from wsroute.config import ConfigError, HandlerSection, loads
from wsroute.dispatch import Dispatcher
from wsroute.handler import HandlerRunner, MemoryBudget, message_size
from wsroute.router import Router
from wsroute.testing import wait_until

pytestmark = pytest.mark.anyio

RAW = 500
SIZE = 3 * RAW  # message_size() of a message with a 500-byte frame


class Gated:
    def __init__(self, gate: anyio.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0
        self.seen: list[int] = []

    async def handle(self, message: Message) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(message.seq)


def section(**kw: Any) -> HandlerSection:
    kw.setdefault("plugin", "test")
    kw.setdefault("timeout", 0)
    return HandlerSection(**kw)


def msg(seq: int, size: int = RAW) -> Message:
    return Message("c", 1, {"n": seq}, raw=b"x" * size, seq=seq)


def test_message_size_is_the_frame_three_times() -> None:
    assert message_size(msg(1)) == SIZE
    assert message_size(Message("c", 1, "é" * 10, raw="é" * 10)) == 3 * 10
    assert message_size(Message("c", "$connected", {})) == 0  # no frame: the count bounds it


async def test_block_under_the_byte_bound_refuses_then_put_waits() -> None:
    gate = anyio.Event()
    rec = Gated(gate)
    budget = MemoryBudget()
    # Room for 100 messages by count, but 2 by bytes (a queue takes one while below).
    runner = HandlerRunner("h", section(queue=100, queue_bytes=2 * SIZE - 1), rec, budget=budget)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        assert runner.offer(msg(1))
        await wait_until(lambda: rec.calls == 1)  # in flight: no longer queued
        assert runner.queued_bytes == 0
        assert runner.offer(msg(2))
        assert runner.offer(msg(3))  # 1 × SIZE < queue_bytes: taken
        assert runner.queued_bytes == budget.total == 2 * SIZE
        assert runner.full
        assert not runner.offer(msg(4))  # the byte bound: backpressure
        assert runner.stats.received == 3
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
        assert runner.queued_bytes == budget.total == 0
        await runner.stop_workers("shutdown")
    assert rec.seen == [1, 2, 3, 4]
    assert runner.stats.dropped == 0
    assert runner.balanced()


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop-oldest", [1, 5, 6]), ("drop-newest", [1, 2, 3])]
)
async def test_drop_policies_under_the_byte_bound(policy: str, kept: list[int]) -> None:
    gate = anyio.Event()
    rec = Gated(gate)
    budget = MemoryBudget()
    runner = HandlerRunner(
        "h", section(queue=100, queue_bytes=2 * SIZE - 1, overflow=policy), rec, budget=budget
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(lambda: rec.calls == 1)
        for i in range(2, 7):
            assert runner.offer(msg(i))
            assert runner.queued_bytes <= 2 * SIZE  # below the bound + one message
            assert runner.queued_bytes == budget.total
        assert runner.stats.dropped == 3
        assert runner.balanced()
        gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert rec.seen == kept
    assert runner.stats.received == 6
    assert runner.queued_bytes == budget.total == 0
    assert runner.balanced()


async def test_drop_oldest_drops_until_below_both_bounds() -> None:
    gate = anyio.Event()
    rec = Gated(gate)
    runner = HandlerRunner(
        "h", section(queue=100, queue_bytes=3 * SIZE, overflow="drop-oldest"), rec
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(lambda: rec.calls == 1)
        for i in range(2, 5):  # three small ones fill the bytes
            assert runner.offer(msg(i))
        big = msg(5, size=2 * RAW)  # 1756 + 1500 bytes: needs two of them gone... then below
        assert runner.offer(big)
        assert runner.stats.dropped == 1  # one oldest out: 2 × SIZE < 3 × SIZE, below again
        assert runner.queued_bytes == 2 * SIZE + message_size(big)
        gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert rec.seen == [1, 3, 4, 5]
    assert runner.balanced()


@pytest.mark.parametrize("policy", ["block", "drop-oldest", "drop-newest"])
async def test_a_message_larger_than_queue_bytes_still_goes_through_alone(policy: str) -> None:
    gate = anyio.Event()
    rec = Gated(gate)
    runner = HandlerRunner("h", section(queue_bytes=100, overflow=policy), rec)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        assert runner.offer(msg(1))  # empty queue: taken, though 1756 > 100
        await wait_until(lambda: rec.calls == 1)
        assert runner.offer(msg(2))  # empty queue again (1 is in flight)
        second = runner.offer(msg(3))
        assert second is (policy != "block")
        gate.set()
        if policy == "block":
            await runner.put(msg(3))  # waits until the queue is empty, then goes in
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert rec.seen == {"block": [1, 2, 3], "drop-oldest": [1, 3], "drop-newest": [1, 2]}[policy]
    assert runner.balanced()


async def test_the_memory_budget_pauses_the_reader_and_never_drops() -> None:
    gates = [anyio.Event(), anyio.Event()]
    recs = [Gated(gates[0]), Gated(gates[1])]
    budget = MemoryBudget(4 * SIZE)
    runners = [
        HandlerRunner(f"h{i}", section(overflow="drop-newest"), rec, budget=budget)
        for i, rec in enumerate(recs)
    ]
    # Fan-out to both: each message counts once per queue it sits in.
    dispatcher = Dispatcher(Router.compile([("r", None, None, runners)]), budget=budget)
    async with anyio.create_task_group() as tg:
        for runner in runners:
            await tg.start(runner.run)
        assert dispatcher.dispatch(msg(1)) is None
        await wait_until(lambda: all(rec.calls == 1 for rec in recs))  # both in flight
        assert dispatcher.dispatch(msg(2)) is None
        assert budget.total == 2 * SIZE
        pending = dispatcher.dispatch(msg(3))  # queued in both: 4 × SIZE, at the budget
        assert pending is not None
        assert budget.total == 4 * SIZE
        assert [r.queued_bytes for r in runners] == [2 * SIZE, 2 * SIZE]
        resumed = anyio.Event()

        async def reader() -> None:
            assert pending is not None
            await pending
            resumed.set()

        tg.start_soon(reader)
        await anyio.sleep(0.05)
        assert not resumed.is_set()  # paused: nobody drains yet
        # A handler's emit() does not wait for the budget (its own queue may hold it).
        assert dispatcher.emit(msg(4)) is None
        assert budget.pauses == 1
        gates[0].set()  # one handler drains: the total falls below the budget
        await wait_until(resumed.is_set)
        gates[1].set()
        for runner in runners:
            await wait_until(runner.idle)
        assert budget.total == 0
        for runner in runners:
            await runner.stop_workers("shutdown")
    for rec in recs:
        assert rec.seen == [1, 2, 3, 4]  # nothing dropped
    for runner in runners:
        assert runner.stats.dropped == 0
        assert runner.balanced()


async def test_set_limit_lets_a_paused_reader_go_on() -> None:
    gate = anyio.Event()
    budget = MemoryBudget(SIZE)
    runner = HandlerRunner("h", section(), Gated(gate), budget=budget)
    dispatcher = Dispatcher(Router.compile([("r", None, None, [runner])]), budget=budget)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        first = dispatcher.dispatch(msg(1))  # at the budget until the worker takes it
        assert first is not None
        with anyio.fail_after(2):
            await first
        assert runner.queued == 0
        pending = dispatcher.dispatch(msg(2))
        assert pending is not None
        with anyio.fail_after(2):
            budget.set_limit(10 * SIZE)  # a reload raised it
            await pending
        gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert runner.balanced()


async def test_leftovers_at_shutdown_and_dead_letters_are_counted_and_given_back() -> None:
    budget = MemoryBudget()
    dlq_rec = Gated()
    dlq = HandlerRunner("dlq", section(), dlq_rec, budget=budget)
    runner = HandlerRunner("h", section(), Gated(anyio.Event()), budget=budget)
    runner.dead_letter = dlq
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        for i in range(1, 5):
            runner.offer(msg(i))
        await wait_until(lambda: runner.queued == 3)
        assert budget.total == 3 * SIZE
        await runner.stop_workers("shutdown")  # 4 dead letters: 1 in flight, 3 queued
        assert runner.queued_bytes == 0
        await wait_until(dlq.idle)
        assert budget.total == 0
        await dlq.stop_workers("shutdown")
    assert len(dlq_rec.seen) == 4
    assert runner.stats.dead_lettered == 4
    assert runner.balanced()
    assert dlq.balanced()


def test_config_defaults_and_spellings() -> None:
    config = loads(
        """
[daemon]
memory_budget = "64MiB"
[connections.up]
url = "ws://127.0.0.1:1/"
max_frame_size = "1MiB"
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "log"
queue_bytes = "32MiB"
[handlers.d]
plugin = "log"
""",
        path="t.toml",
    )
    assert config.daemon.memory_budget == 64 * 2**20
    assert config.handlers["h"].queue_bytes == 32 * 2**20
    assert config.handlers["h"].options == {}  # a delivery key, not a plugin option
    assert config.handlers["d"].queue_bytes == 64 * 2**20
    assert loads('[connections.up]\nurl = "ws://a/"\n', path="t").daemon.memory_budget == 2**29


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (
            '[connections.up]\nurl = "ws://a/"\nmax_frame_size = 0\n',
            "connections.up.max_frame_size",
            "there is no unlimited",
        ),
        (
            '[connections.up]\nurl = "ws://a/"\nmax_frame_size = "0B"\n',
            "connections.up.max_frame_size",
            "there is no unlimited",
        ),
        (
            '[handlers.h]\nplugin = "log"\nqueue_bytes = 0\n',
            "handlers.h.queue_bytes",
            "at least 1B",
        ),
        ('[daemon]\nmemory_budget = "0MiB"\n', "daemon.memory_budget", "at least 1B"),
        ('[daemon]\nmemory_budget = "lots"\n', "daemon.memory_budget", "a size"),
    ],
)
def test_zero_sizes_are_refused_at_their_key(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, path="t.toml")
    found = {issue.path: issue.message for issue in info.value.issues}
    assert path in found, found
    assert words in found[path]
