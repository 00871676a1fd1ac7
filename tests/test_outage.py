"""The outage rule in the delivery layer: an Unavailable engine is waited out, not failed.

A handler whose ``handle()`` raises :class:`wsroute.Unavailable` keeps the
message (no failure, no retry counted), logs one ``<engine>_unavailable`` and
one ``<engine>_recovered``, honours ``retry_after``, gives up after
``outage_timeout`` (dead letter ``outage``), and dead-letters what it holds at
a stop (``shutdown``); a dead-letter handler that is itself down logs each
message as lost, with its record.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from wsroute import Duration, Message, Outage, OutageExpired, Unavailable
from wsroute.config import HandlerSection
from wsroute.config.schema import BatchSection
from wsroute.handler import HandlerRunner
from wsroute.outage import backoff, is_outage, is_outage_status
from wsroute.testing import wait_until

pytestmark = pytest.mark.anyio


class Engine:
    """A sink whose engine is down while ``down`` is set; refuses seqs in ``refuse``."""

    def __init__(self, *, down: bool = False, retry_after: float | None = None) -> None:
        self.down = down
        self.retry_after = retry_after
        self.refuse: set[int] = set()
        self.calls: list[tuple[int, float]] = []
        self.stored: list[int] = []

    def _one(self, message: Message) -> None:
        self.calls.append((message.seq, time.monotonic()))
        if self.down:
            raise Unavailable("connection refused", retry_after=self.retry_after)
        if message.seq in self.refuse:
            raise ValueError(f"refused {message.seq}")
        self.stored.append(message.seq)

    async def handle(self, message: Message) -> None:
        self._one(message)


class BatchEngine(Engine):
    async def handle_batch(self, messages: list[Message]) -> dict[int, BaseException] | None:
        failures: dict[int, BaseException] = {}
        for position, message in enumerate(messages):
            try:
                self._one(message)
            except Exception as exc:
                failures[position] = exc
        return failures or None


class Letters:
    def __init__(self) -> None:
        self.letters: list[Message] = []

    async def handle(self, message: Message) -> None:
        self.letters.append(message)


def section(**kw: Any) -> HandlerSection:
    kw.setdefault("plugin", "engine")
    return HandlerSection(**kw)


def msg(seq: int) -> Message:
    return Message("c", "k", {"n": seq}, raw=f'{{"n":{seq}}}', seq=seq)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.parametrize("batch", [False, True])
async def test_an_outage_holds_the_messages_and_counts_no_failure(batch: bool) -> None:
    engine = BatchEngine(down=True) if batch else Engine(down=True)
    kw: dict[str, Any] = {"batch": BatchSection(max=10, wait=Duration(0))} if batch else {}
    runner = HandlerRunner("h", section(**kw), engine, plugin="engine")
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            for seq in (1, 2, 3):
                assert runner.offer(msg(seq))
            await wait_until(lambda: len(engine.calls) >= 2, 5)
            assert runner.outage.active
            assert runner.snapshot()["outage"] == 1
            assert runner.in_flight == 3
            engine.down = False
            await wait_until(runner.idle, 5)
            await runner.stop_workers("shutdown")
    assert engine.stored == [1, 2, 3]
    stats = runner.stats
    assert (stats.handled, stats.failures, stats.retries, stats.dead_lettered) == (3, 0, 0, 0)
    assert len(events(logs, "engine_unavailable")) == 1
    [recovered] = events(logs, "engine_recovered")
    assert recovered["down_for"] > 0
    assert not runner.outage.active
    assert runner.outage.count == 1
    assert runner.outage.seconds_total >= recovered["down_for"] - 0.001
    assert runner.balanced()


async def test_retry_after_is_honoured() -> None:
    engine = Engine(down=True, retry_after=0.4)
    runner = HandlerRunner("h", section(), engine, plugin="engine")
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        runner.offer(msg(1))
        await wait_until(lambda: len(engine.calls) >= 1, 5)
        engine.down = False
        await wait_until(runner.idle, 5)
        await runner.stop_workers("shutdown")
    (_, first), (_, second) = engine.calls
    assert second - first >= 0.4


async def test_a_refusal_during_no_outage_is_a_failure_and_dead_letters_that_message() -> None:
    engine = Engine()
    engine.refuse = {2}
    letters = Letters()
    runner = HandlerRunner("h", section(retries=1), engine, plugin="engine")
    dead = HandlerRunner("dlq", section(), letters)
    runner.dead_letter = dead
    async with anyio.create_task_group() as tg:
        await tg.start(dead.run)
        await tg.start(runner.run)
        for seq in (1, 2, 3):
            runner.offer(msg(seq))
        await wait_until(lambda: runner.idle() and dead.idle(), 5)
        await runner.stop_workers("shutdown")
        await dead.stop_workers("shutdown")
    assert engine.stored == [1, 3]
    assert [(m.seq, m.dead_letter and m.dead_letter.reason) for m in letters.letters] == [
        (2, "handler_error")
    ]
    assert runner.stats.failures == 2
    assert not runner.outage.count


@pytest.mark.parametrize("batch", [False, True])
async def test_outage_timeout_dead_letters_what_is_held_with_reason_outage(batch: bool) -> None:
    engine = BatchEngine(down=True) if batch else Engine(down=True)
    kw: dict[str, Any] = {"batch": BatchSection(max=2, wait=Duration(0))} if batch else {}
    letters = Letters()
    runner = HandlerRunner("h", section(outage_timeout=0.3, **kw), engine, plugin="engine")
    dead = HandlerRunner("dlq", section(), letters)
    runner.dead_letter = dead
    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(dead.run)
        await tg.start(runner.run)
        for seq in (1, 2, 3):
            runner.offer(msg(seq))
        await wait_until(lambda: len(letters.letters) == 3, 5)
        took = time.monotonic() - began
        await runner.stop_workers("shutdown")
        await dead.stop_workers("shutdown")
    assert 0.3 <= took < 3
    assert sorted(m.seq for m in letters.letters) == [1, 2, 3]
    assert {m.dead_letter.reason for m in letters.letters if m.dead_letter} == {"outage"}
    assert runner.stats.failures == 0
    assert runner.balanced()


async def test_a_stop_during_an_outage_dead_letters_with_reason_shutdown() -> None:
    engine = Engine(down=True)
    letters = Letters()
    runner = HandlerRunner("h", section(), engine, plugin="engine")
    dead = HandlerRunner("dlq", section(), letters)
    runner.dead_letter = dead
    async with anyio.create_task_group() as tg:
        await tg.start(dead.run)
        await tg.start(runner.run)
        for seq in (1, 2):
            runner.offer(msg(seq))
        await wait_until(lambda: runner.outage.active, 5)
        with anyio.fail_after(1):  # the wait is cancelled at once
            await runner.stop_workers("shutdown")
        await wait_until(dead.idle, 5)
        await dead.stop_workers("shutdown")
    assert [(m.seq, m.dead_letter and m.dead_letter.reason) for m in letters.letters] == [
        (1, "shutdown"),
        (2, "shutdown"),
    ]
    assert runner.balanced()


async def test_a_dead_letter_handler_in_an_outage_logs_each_message_lost_with_its_record() -> None:
    engine = Engine(down=True)
    down_too = Engine(down=True)
    runner = HandlerRunner("h", section(), engine, plugin="engine")
    dead = HandlerRunner("dlq", section(), down_too, plugin="jsonl")
    runner.dead_letter = dead
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(dead.run)
            await tg.start(runner.run)
            runner.offer(msg(7))
            await wait_until(lambda: runner.outage.active, 5)
            await runner.stop_workers("shutdown")
            await wait_until(lambda: dead.outage.active, 5)
            await dead.stop_workers("shutdown")
    [lost] = events(logs, "message_lost")
    assert lost["reason"] == "shutdown"
    assert lost["record"]["body"] == {"n": 7}
    assert lost["record"]["seq"] == 7
    assert dead.stats.lost == 1
    assert len(events(logs, "jsonl_unavailable")) == 1


async def test_outage_call_waits_out_outages_and_raises_failures() -> None:
    tries: list[float] = []

    async def command() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise ConnectionRefusedError(111, "refused")
        if len(tries) == 3:
            return "ok"
        raise ValueError("WRONGTYPE")

    with capture_logs() as logs:
        outage = Outage("redis", pytest_log(), initial=0.05, cap=0.1)
        assert await outage.call(command) == "ok"
        with pytest.raises(ValueError, match="WRONGTYPE"):
            await outage.call(command)
    assert [e["event"] for e in logs if not e["event"].endswith("_retry")] == [
        "redis_unavailable",
        "redis_recovered",
    ]
    expiring = Outage("redis", pytest_log(), timeout=0.2, initial=0.05, cap=0.05)

    async def down() -> None:
        raise TimeoutError

    began = time.monotonic()
    with pytest.raises(OutageExpired):
        await expiring.call(down)
    assert 0.2 <= time.monotonic() - began < 1


def pytest_log() -> Any:
    import structlog

    return structlog.get_logger("test")


def test_the_generic_rule() -> None:
    assert is_outage(Unavailable("x"))
    assert is_outage(TimeoutError())
    assert is_outage(ConnectionResetError())
    assert is_outage(OSError(28, "No space left on device"))
    assert not is_outage(OSError(13, "Permission denied"))
    assert not is_outage(ValueError("bad"))
    assert [is_outage_status(s) for s in (500, 503, 408, 429, 400, 404, 413)] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    delays = backoff(0.1, 0.4)
    firsts = [next(delays) for _ in range(6)]
    assert all(0.05 <= d <= 0.4 for d in firsts)
    assert firsts[-1] >= 0.2  # capped at 0.4, jittered down by half at most
