"""``handle_batch(messages)`` and the ``batch`` delivery key, as HandlerRunner drives them.

Real runners on the event loop (the dead letters go to a second runner), the
accounting identity checked in the middle of every call, and a config check
end to end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from wsroute import ConfigError, Message
from wsroute.config import HandlerSection
from wsroute.config.schema import BatchSection
from wsroute.handler import HandlerRunner
from wsroute.testing import run_daemon, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Batcher:
    """Keeps every call's messages; ``fail`` says what each call does (by call number)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.handled: list[int] = []
        self.singles: list[int] = []
        self.runner: HandlerRunner | None = None
        self.raise_on: set[int] = set()  # call numbers (1-based) that raise
        self.hang_on: set[int] = set()  # call numbers that never return
        self.poison: set[int] = set()  # message seqs reported failed every time
        self.gate: anyio.Event | None = None

    async def handle(self, message: Message) -> None:
        self.singles.append(message.seq)

    async def handle_batch(self, messages: list[Message]) -> Mapping[int, BaseException] | None:
        assert self.runner is not None
        assert self.runner.balanced()  # in flight while being handled
        self.calls.append([m.seq for m in messages])
        call = len(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        if call in self.hang_on:
            await anyio.sleep_forever()
        if call in self.raise_on:
            raise ConnectionError("target down")
        failed = {
            i: ValueError(f"bad {m.seq}") for i, m in enumerate(messages) if m.seq in self.poison
        }
        self.handled.extend(m.seq for i, m in enumerate(messages) if i not in failed)
        return failed or None


class Letters:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle(self, message: Message) -> None:
        self.messages.append(message)


def make(
    plugin: Batcher, *, max: int = 10, wait: float = 0.0, **section: Any
) -> tuple[HandlerRunner, HandlerRunner, Letters]:
    batch = BatchSection(max=max, wait=wait)  # type: ignore[arg-type]
    runner = HandlerRunner("b", HandlerSection(plugin="test", batch=batch, **section), plugin)
    plugin.runner = runner
    letters = Letters()
    dlq = HandlerRunner("dlq", HandlerSection(plugin="test"), letters)
    runner.dead_letter = dlq
    return runner, dlq, letters


def offer(runner: HandlerRunner, seqs: range) -> None:
    for seq in seqs:
        assert runner.offer(Message("c", "k", {"n": seq}, raw=b"x" * 10, seq=seq))


async def test_queued_messages_go_in_batches_of_at_most_max() -> None:
    plugin = Batcher()
    plugin.gate = anyio.Event()
    runner, dlq, _ = make(plugin, max=10)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 2))
        await wait_until(lambda: len(plugin.calls) == 1)
        offer(runner, range(2, 26))  # queued while the first call waits
        plugin.gate.set()
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert [len(c) for c in plugin.calls] == [1, 10, 10, 4]
    assert plugin.handled == list(range(1, 26))
    assert plugin.singles == []
    assert runner.snapshot()["handled"] == 25
    assert runner.balanced()


async def test_a_worker_waits_up_to_wait_for_a_fuller_batch() -> None:
    plugin = Batcher()
    runner, dlq, _ = make(plugin, max=5, wait=0.3)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 2))
        await anyio.sleep(0.05)
        offer(runner, range(2, 4))  # within the wait: the same call
        await wait_until(runner.idle, timeout=5)
        offer(runner, range(4, 10))  # more than max: the first call goes at once
        await wait_until(runner.idle, timeout=5)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert plugin.calls == [[1, 2, 3], [4, 5, 6, 7, 8], [9]]


async def test_a_batch_that_raises_is_retried_whole_and_counted_per_message() -> None:
    plugin = Batcher()
    plugin.raise_on = {1}
    runner, dlq, letters = make(plugin, retries=2)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 4))
        await wait_until(lambda: runner.stats.handled == 3, timeout=5)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert plugin.calls == [[1, 2, 3], [1, 2, 3]]
    s = runner.stats
    assert (s.received, s.handled, s.failures, s.retries, s.dead_lettered) == (3, 3, 3, 3, 0)
    assert letters.messages == []


async def test_a_partial_failure_dead_letters_only_the_message_that_keeps_failing() -> None:
    plugin = Batcher()
    plugin.poison = {2}
    runner, dlq, letters = make(plugin, retries=2)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 5))
        await wait_until(lambda: len(letters.messages) == 1, timeout=5)
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert plugin.calls == [[1, 2, 3, 4], [2], [2]]  # only the failed one is retried
    assert plugin.handled == [1, 3, 4]
    (letter,) = letters.messages
    assert letter.seq == 2
    assert letter.dead_letter is not None
    info = letter.dead_letter
    assert (info.reason, info.handler, info.attempts) == ("handler_error", "b", 3)
    assert info.error == "ValueError: bad 2"
    s = runner.stats
    assert (s.received, s.handled, s.dead_lettered, s.failures, s.retries) == (4, 3, 1, 3, 2)
    assert runner.balanced()


async def test_a_batch_that_overruns_timeout_is_retried_then_dead_lettered() -> None:
    plugin = Batcher()
    plugin.hang_on = {1, 2}
    runner, dlq, letters = make(plugin, retries=1, timeout=0.2)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 3))
        await wait_until(lambda: len(letters.messages) == 2, timeout=10)
        offer(runner, range(3, 4))  # the worker goes on
        await wait_until(lambda: runner.stats.handled == 1, timeout=5)
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert time.monotonic() - started < 10
    assert [m.dead_letter.reason for m in letters.messages if m.dead_letter] == ["timeout"] * 2
    s = runner.stats
    assert (s.timeouts, s.failures, s.retries, s.dead_lettered, s.handled) == (4, 4, 2, 2, 1)
    assert runner.balanced()


async def test_shutdown_drains_what_is_queued_and_dead_letters_what_is_held() -> None:
    plugin = Batcher()
    runner, dlq, letters = make(plugin, max=4, wait=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 11))
        runner.close()
        assert await runner.drain(time.monotonic() + 5)
        assert plugin.handled == list(range(1, 11))  # nothing lost on a clean drain
        assert [len(c) for c in plugin.calls] == [4, 4, 2]
        plugin.hang_on = {4}
        runner._accepting = True  # a second wave that never finishes
        offer(runner, range(11, 14))
        await wait_until(lambda: len(plugin.calls) == 4, timeout=5)
        assert runner.in_flight == 3
        await runner.stop_workers("shutdown")
        await wait_until(lambda: len(letters.messages) == 3, timeout=5)
        await dlq.stop_workers("shutdown")
    assert sorted(m.seq for m in letters.messages) == [11, 12, 13]
    s = runner.stats
    assert (s.received, s.handled, s.dead_lettered, runner.in_flight) == (13, 10, 3, 0)
    assert runner.balanced()


async def test_without_handle_batch_the_handler_gets_one_message_at_a_time() -> None:
    letters = Letters()
    runner = HandlerRunner("one", HandlerSection(plugin="test", batch=BatchSection(max=5)), letters)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        offer(runner, range(1, 4))  # type: ignore[arg-type]
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    assert [m.seq for m in letters.messages] == [1, 2, 3]


CONFIG = """
[connections.up]
url = "ws://127.0.0.1:1/"

[routes.all]
handlers = ["one"]

[handlers.one]
plugin = "log"
batch = { max = 10, wait = "5ms" }
"""


async def test_batch_on_a_plugin_without_handle_batch_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"handlers\.one\.batch.*no handle_batch"):
        async with run_daemon(CONFIG, tmp_path=tmp_path):
            pass


async def test_closing_sends_a_partial_batch_without_waiting_for_it_to_fill() -> None:
    plugin = Batcher()
    runner, dlq, _ = make(plugin, max=10, wait=60.0)
    async with anyio.create_task_group() as tg:
        await tg.start(dlq.run)
        await tg.start(runner.run)
        offer(runner, range(1, 3))
        await wait_until(lambda: runner.queued == 0)  # held, waiting for 8 more
        assert plugin.calls == []
        runner.close()
        assert await runner.drain(time.monotonic() + 10)  # well before `wait` is up
        await runner.stop_workers("shutdown")
        await dlq.stop_workers("shutdown")
    assert plugin.calls == [[1, 2]]
    assert runner.stats.handled == 2
