"""Faults in the handlers: raising, hanging, blocking, too slow, writing to a full or gone disk.

The promise checked throughout: every frame the daemon read is, for each
handler its routes name, handled, dead-lettered with a reason, or dropped by
the overflow policy the operator chose — counted, logged, and with
``received = handled + dead_lettered + dropped + in_flight`` per handler.
One handler's trouble never stops another handler or the connection.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from wsroute.records import parse_record
from wsroute.service import Service
from wsroute.testing import wait_until

from collectors import Collect, SyncCollect
from conftest import running
from faultplugins import Gated
from peers import events, vmrss, ws_server

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _reset_plugins() -> None:
    Collect.reset()
    SyncCollect.seen.clear()
    Gated.reset()


@dataclass
class Burst:
    """An upstream writing ``count`` ticks (JSON text, ``padding`` bytes each) as fast as it can.

    ``count=0``: until :meth:`stop`. ``sent`` counts frames handed to websockets,
    whose ``send`` waits while its write buffer is full: a stalled ``sent``
    means the client stopped reading. More ticks can be queued with :meth:`push`.
    """

    count: int = 0
    padding: int = 0
    sent: int = 0
    connections: int = 0
    stopped: bool = False
    finished: bool = False  # the burst is over (count reached or stopped)
    extra: list[int] = field(default_factory=list)
    _more: anyio.Event = field(default_factory=anyio.Event)

    def tick(self, number: int) -> str:
        return json.dumps({"type": "tick", "id": number, "pad": "x" * self.padding})

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, ws)
            await ws.wait_closed()
            tg.cancel_scope.cancel()

    async def _write(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while not self.stopped and (self.count == 0 or self.sent < self.count):
                await ws.send(self.tick(self.sent + 1))
                self.sent += 1
            self.finished = True
            while True:
                await self._more.wait()
                self._more = anyio.Event()
                while self.extra:
                    self.extra.pop(0)
                    await ws.send(self.tick(self.sent + 1))
                    self.sent += 1

    def is_finished(self) -> bool:
        return self.finished

    def push(self, count: int) -> None:
        """Send ``count`` more ticks on the open connection."""
        self.extra.extend(range(count))
        self._more.set()

    def stop(self) -> None:
        self.stopped = True

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async with ws_server(self.handler) as url:
            yield url


BASE = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "SHUTDOWN"

[connections.up]
url = "URL"
EXTRA

[routes.data]
key = "tick"
handlers = HANDLERS

HANDLER_TABLES

[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(
    url: str,
    handlers: list[str],
    tables: str,
    extra: str = "",
    shutdown: str = "2s",
) -> str:
    return (
        BASE.replace("URL", url)
        .replace("HANDLERS", json.dumps(handlers))
        .replace("HANDLER_TABLES", tables)
        .replace("EXTRA", extra)
        .replace("SHUTDOWN", shutdown)
    )


def assert_balanced(service: Service) -> None:
    for name, runner in service.runners.items():
        assert runner.balanced(), (name, runner.snapshot())


def dead_for(handler: str) -> list[Any]:
    return [m for m in Collect.seen["dlq"] if m.dead_letter and m.dead_letter.handler == handler]


# -- 10. handlers that raise, hang, block -----------------------------------------


async def test_raising_handler_is_retried_then_dead_lettered_and_isolated() -> None:
    burst = Burst(count=3)
    tables = """
[handlers.broken]
plugin = "collectors:Collect"
fail_always = true
retries = 2
[handlers.good]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["broken", "good"], tables)) as svc:
            await wait_until(lambda: len(Collect.seen["good"]) == 3, timeout=5)
            # the good handler did not wait for the broken one's retries (0.1 s + 0.2 s each)
            assert svc.runners["broken"].stats.dead_lettered < 3
            await wait_until(lambda: len(dead_for("broken")) == 3, timeout=5)
            assert_balanced(svc)
            broken = svc.runners["broken"].stats
            assert (broken.handled, broken.dead_lettered, broken.failures) == (0, 3, 9)
    assert Collect.attempts["broken"] == 9  # retries + 1 attempts per message
    for letter in dead_for("broken"):
        assert letter.dead_letter.reason == "handler_error"
        assert letter.dead_letter.attempts == 3
        assert "fails on purpose" in letter.dead_letter.error
    assert sorted(m.seq for m in dead_for("broken")) == [1, 2, 3]
    assert len(events(logs, "handler_retry")) == 6
    failed = events(logs, "handler_failed")
    assert len(failed) == 3
    assert {e["log_level"] for e in failed} == {"error"}
    assert burst.connections == 1


async def test_hanging_handler_times_out_into_the_dead_letters() -> None:
    burst = Burst(count=3)
    tables = """
[handlers.stuck]
plugin = "collectors:Collect"
hang = true
timeout = "100ms"
retries = 0
[handlers.good]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["stuck", "good"], tables)) as svc:
            await wait_until(lambda: len(dead_for("stuck")) == 3, timeout=5)
            assert len(Collect.seen["good"]) == 3
            stats = svc.runners["stuck"].stats
            assert (stats.timeouts, stats.dead_lettered, stats.handled) == (3, 3, 0)
            assert_balanced(svc)
    assert {m.dead_letter.reason for m in dead_for("stuck")} == {"timeout"}
    errors = {m.dead_letter.error for m in dead_for("stuck")}
    assert all(error and error.startswith("TimeoutError: no result within") for error in errors)
    assert len(events(logs, "handler_failed")) == 3


async def test_blocking_sync_handler_does_not_block_the_loop_or_the_others() -> None:
    burst = Burst(count=10)
    tables = """
[handlers.sync]
plugin = "collectors:SyncCollect"
sleep = "300ms"
timeout = "5s"
[handlers.good]
plugin = "collectors:Collect"
"""
    lag = 0.0

    async def probe() -> None:
        nonlocal lag
        while True:
            before = time.monotonic()
            await anyio.sleep(0.01)
            lag = max(lag, time.monotonic() - before - 0.01)

    cfg = config("URL", ["sync", "good"], tables, shutdown="500ms")
    async with burst.serve() as url:
        with capture_logs() as logs:
            async with running(cfg.replace("URL", url)) as svc, anyio.create_task_group() as tg:
                tg.start_soon(probe)
                await wait_until(lambda: len(Collect.seen["good"]) == 10, timeout=5)
                # the sync handler sleeps 300 ms per message in a thread; the others carry on
                assert len(SyncCollect.seen["sync"]) <= 1
                await wait_until(lambda: len(SyncCollect.seen["sync"]) >= 2, timeout=5)
                tg.cancel_scope.cancel()
    assert lag < 0.25, f"event loop stalled for {lag:.3f} s"
    runner = svc.runners["sync"]
    stats = runner.stats
    assert runner.balanced()
    assert runner.in_flight == 0
    # what shutdown_timeout did not let it finish went to the dead letters, not nowhere
    assert stats.handled + stats.dead_lettered == 10
    assert {m.dead_letter.reason for m in dead_for("sync")} <= {"shutdown"}
    assert len(dead_for("sync")) == stats.dead_lettered
    assert not events(logs, "delivery_unbalanced")


# -- 11. a handler slower than its input, under each overflow policy -----------------


async def test_block_policy_stops_the_reader_without_tripping_the_keepalive() -> None:
    burst = Burst(padding=1000)  # 1 KB frames until stopped; uncompressed: pipes fill up
    tables = """
[handlers.slow]
plugin = "faultplugins:Gated"
queue = 10
overflow = "block"
"""
    extra = 'ping_interval = "200ms"\nping_timeout = "300ms"\ncompression = "none"'
    gate = Gated.close("slow")
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["slow"], tables, extra)) as svc:
            conn = svc.connections["up"]
            await wait_until(lambda: Gated.calls["slow"] == 1, timeout=5)
            await anyio.sleep(0.5)  # let the socket buffers fill up
            sent_1, read_1, rss_1 = burst.sent, conn.seq, vmrss()
            await anyio.sleep(1.5)  # > 4 keepalive periods with the reader paused
            sent_2, read_2, rss_2 = burst.sent, conn.seq, vmrss()
            # the server cannot write more: backpressure reached the socket
            assert sent_2 == sent_1
            assert burst.sent > 0
            assert not burst.is_finished()
            assert read_2 == read_1 == svc.runners["slow"].stats.received + 1
            assert svc.runners["slow"].stats.dropped == 0
            assert not events(logs, "keepalive_timeout")
            burst.stop()
            gate.set()
            await wait_until(
                lambda: burst.is_finished() and len(Gated.seen["slow"]) == burst.sent, timeout=20
            )
            assert conn.stats.reconnects == 0
            assert_balanced(svc)
    print(
        f"\nblock: server wrote {sent_1} frames of 1 KB before it stalled, the daemon read "
        f"{read_1}; RSS {rss_1 / MiB:.1f} -> {rss_2 / MiB:.1f} MiB while blocked for 1.5 s"
    )
    assert abs(rss_2 - rss_1) < 10 * MiB  # flat while blocked
    assert burst.connections == 1
    assert Gated.seen["slow"] == list(range(1, burst.sent + 1))
    assert events(logs, "keepalive_skipped")  # pongs went unread, and that was not fatal
    assert not events(logs, "keepalive_timeout")
    assert not events(logs, "connection_lost")


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest"])
async def test_drop_policies_drop_count_and_log_and_keep_the_others_whole(policy: str) -> None:
    total, queue = 2000, 100
    burst = Burst(count=total)
    tables = f"""
[handlers.slow]
plugin = "faultplugins:Gated"
queue = {queue}
overflow = "{policy}"
[handlers.archive]
plugin = "faultplugins:Gated"
"""
    gate = Gated.close("slow")
    with capture_logs() as logs:
        async with (
            burst.serve() as url,
            running(config(url, ["slow", "archive"], tables)) as svc,
        ):
            conn = svc.connections["up"]
            await wait_until(lambda: conn.seq == total, timeout=5)  # the reader never waited
            slow = svc.runners["slow"]
            await wait_until(lambda: Gated.calls["slow"] == 1)
            assert slow.stats.dropped == total - queue - 1  # one in flight, `queue` queued
            assert slow.balanced()
            gate.set()
            await wait_until(lambda: slow.idle() and len(Gated.seen["archive"]) == total)
            assert_balanced(svc)
            assert slow.stats.handled + slow.stats.dropped == total
    # The reader offers without a task switch, so the worker takes its first message
    # only once the reader pauses: one message somewhere in the middle, plus the queue.
    kept = Gated.seen["slow"]
    assert len(kept) == queue + 1
    assert kept == sorted(kept)
    if policy == "drop-newest":
        assert kept[:queue] == list(range(1, queue + 1))  # the first `queue` stayed
    else:
        assert kept[1:] == list(range(total - queue + 1, total + 1))  # the last `queue` stayed
    assert Gated.seen["archive"] == list(range(1, total + 1))
    dropped = events(logs, "message_dropped")
    assert 1 <= len(dropped) <= 2  # rate-limited: one line a second, with a running total
    assert dropped[0]["log_level"] == "warning"
    assert dropped[0]["policy"] == policy
    totals = next(e for e in events(logs, "delivery_totals") if e["handler"] == "slow")
    assert totals["dropped"] == total - queue - 1


@pytest.mark.parametrize("policy", ["block", "drop-oldest"])
async def test_memory_stays_bounded_with_a_fast_upstream_and_a_slow_handler(policy: str) -> None:
    burst = Burst(padding=1000)  # 1 KB frames, until stopped
    tables = f"""
[handlers.slow]
plugin = "faultplugins:Gated"
delay = "1ms"
overflow = "{policy}"
"""
    extra = 'compression = "none"\nclose_timeout = "300ms"'
    samples: list[int] = []
    baseline = vmrss()
    async with (
        burst.serve() as url,
        running(config(url, ["slow"], tables, extra, shutdown="200ms")) as svc,
    ):
        with anyio.move_on_after(3.0):
            while True:
                samples.append(vmrss())
                await anyio.sleep(0.05)
        burst.stop()
        read = svc.connections["up"].seq
        stats = svc.runners["slow"].snapshot()
        assert svc.runners["slow"].balanced()
    peak = max(samples)
    print(
        f"\n{policy}: RSS baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
        f"(+{(peak - baseline) / MiB:.1f}), last {samples[-1] / MiB:.1f} MiB; "
        f"server wrote {burst.sent}, daemon read {read}, slow handler {stats}"
    )
    assert read > 1000
    assert peak - baseline < 100 * MiB
    if policy == "block":
        assert stats["dropped"] == 0
    else:
        assert stats["dropped"] > 0


# -- 12. a sink that cannot write -------------------------------------------------


async def test_disk_full_archive_is_held_then_dead_lettered_to_another_file(
    tmp_path: Path,
) -> None:
    # A full disk is an outage, not a failure of the message: held, no retry counted,
    # until outage_timeout dead-letters what is held (reason "outage").
    dlq = tmp_path / "dead.jsonl"
    burst = Burst(count=5)
    tables = f"""
[handlers.archive]
plugin = "jsonl"
path = "/dev/full"
retries = 1
outage_timeout = "300ms"
dead_letter = "disk_dlq"
[handlers.good]
plugin = "collectors:Collect"
[handlers.disk_dlq]
plugin = "jsonl"
path = "{dlq}"
"""
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["archive", "good"], tables)) as svc:
            archive = svc.runners["archive"]
            await wait_until(lambda: archive.stats.dead_lettered == 5, timeout=5)
            await wait_until(lambda: svc.runners["disk_dlq"].stats.handled == 5, timeout=5)
            assert archive.stats.failures == 0
            assert archive.stats.handled == 0
            assert len(Collect.seen["good"]) == 5
            assert svc.connections["up"].connected
            assert_balanced(svc)
    records = [parse_record(line) for line in dlq.read_bytes().splitlines()]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert r.dead_letter is not None
        assert r.dead_letter.reason == "outage"
        assert r.dead_letter.handler == "archive"
        assert "No space left on device" in (r.dead_letter.error or "")
        assert r.body["id"] == r.seq
    assert events(logs, "handler_failed") == []
    assert len(events(logs, "jsonl_unavailable")) >= 1
    assert burst.connections == 1


async def test_disk_full_dead_letter_sink_logs_and_counts_what_is_lost() -> None:
    burst = Burst(count=3)
    tables = """
[handlers.broken]
plugin = "collectors:Collect"
fail_always = true
retries = 0
dead_letter = "full_dlq"
[handlers.full_dlq]
plugin = "jsonl"
path = "/dev/full"
retries = 1
outage_timeout = "300ms"
"""
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["broken"], tables)) as svc:
            full = svc.runners["full_dlq"]
            await wait_until(lambda: full.stats.lost == 3, timeout=5)
            assert svc.runners["broken"].stats.dead_lettered == 3
            assert full.stats.dead_lettered == 3
            assert svc.connections["up"].connected
            assert_balanced(svc)
    lost = events(logs, "message_lost")
    assert [e["seq"] for e in lost] == [1, 2, 3]
    assert {e["log_level"] for e in lost} == {"error"}
    assert {e["handler"] for e in lost} == {"full_dlq"}


async def test_sink_folder_removed_while_running_dead_letters_then_recovers(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    target = folder / "a.jsonl"
    dlq = tmp_path / "dead.jsonl"
    burst = Burst(count=3)
    tables = f"""
[handlers.archive]
plugin = "jsonl"
path = "{target}"
retries = 1
dead_letter = "disk_dlq"
[handlers.disk_dlq]
plugin = "jsonl"
path = "{dlq}"
"""
    with capture_logs() as logs:
        async with burst.serve() as url, running(config(url, ["archive"], tables)) as svc:
            archive = svc.runners["archive"]
            await wait_until(lambda: archive.stats.handled == 3, timeout=5)
            shutil.rmtree(folder)
            # the handler notices a vanished file within a second (jsonl checks the
            # inode at most once a second): then every write fails
            await anyio.sleep(1.1)
            burst.push(3)
            await wait_until(lambda: svc.runners["disk_dlq"].stats.handled == 3, timeout=5)
            assert archive.stats.dead_lettered == 3
            folder.mkdir()
            burst.push(3)
            await wait_until(lambda: archive.stats.handled == 6, timeout=5)
            assert svc.connections["up"].connected
            assert_balanced(svc)
    records = [parse_record(line) for line in dlq.read_bytes().splitlines()]
    assert [r.seq for r in records] == [4, 5, 6]
    assert {r.dead_letter.reason for r in records if r.dead_letter} == {"handler_error"}
    assert all("does not exist" in (r.dead_letter.error or "") for r in records if r.dead_letter)
    assert [parse_record(x).seq for x in target.read_bytes().splitlines()] == [7, 8, 9]
    assert len(events(logs, "handler_failed")) == 3


async def test_sink_does_not_count_lines_written_to_a_removed_file_as_handled(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    burst = Burst(count=1)
    tables = f"""
[handlers.archive]
plugin = "jsonl"
path = "{folder / "a.jsonl"}"
retries = 0
"""
    async with burst.serve() as url, running(config(url, ["archive"], tables)) as svc:
        archive = svc.runners["archive"]
        await wait_until(lambda: archive.stats.handled == 1, timeout=5)
        shutil.rmtree(folder)
        burst.push(1)
        await wait_until(lambda: archive.stats.received == 2 and archive.idle(), timeout=5)
        assert archive.stats.handled == 1  # the second line is in no file
        assert archive.stats.dead_lettered == 1


# -- the reader blocked on two full queues at shutdown --------------------------------


async def test_shutdown_while_blocked_on_two_full_queues_dead_letters_for_both() -> None:
    """Stop while the reader waits for room in two ``block`` queues: both account for the frame."""
    burst = Burst(count=10)
    tables = """
[handlers.a]
plugin = "faultplugins:Gated"
queue = 1
[handlers.b]
plugin = "faultplugins:Gated"
queue = 1
"""
    Gated.close("a")
    Gated.close("b")
    async with burst.serve() as url:
        with capture_logs() as logs:
            async with running(config(url, ["a", "b"], tables, shutdown="300ms")) as svc:
                conn = svc.connections["up"]
                # 1 in flight + 1 queued in each, the 3rd frame waits for room in both
                await wait_until(lambda: conn.seq == 3 and Gated.calls["b"] == 1, timeout=5)
                await anyio.sleep(0.1)
    read = svc.connections["up"].seq
    assert read == 3
    for name in ("a", "b"):
        runner = svc.runners[name]
        assert runner.balanced(), (name, runner.snapshot())
        letters = sorted(m.seq for m in dead_for(name))
        assert letters == [1, 2, 3], (name, letters, runner.snapshot())
        assert runner.stats.received == read
    assert not events(logs, "delivery_unbalanced")


# -- a flood of dead letters meets a slow dead-letter handler ----------------------


@pytest.mark.parametrize("source", ["undecodable-frames", "failing-handler"])
async def test_dead_letter_flood_is_held_back_not_queued_without_bound(source: str) -> None:
    """Dead letters may pass the dead-letter queue's limit (they are never dropped), but
    whoever produces them waits while it is over: memory stays bounded, nothing is lost."""
    dlq_queue = 200
    garbage = source == "undecodable-frames"
    padding = "x" * 1000

    async def flood(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            number = 0
            while True:
                number += 1
                if garbage:
                    await ws.send("{not json " + padding)
                else:
                    await ws.send(json.dumps({"type": "tick", "id": number, "pad": padding}))

    text = f"""
[daemon]
dead_letter = "dlq"
shutdown_timeout = "300ms"
[connections.up]
url = "URL"
compression = "none"
close_timeout = "300ms"
ping_interval = "200ms"
ping_timeout = "300ms"
[routes.data]
key = "tick"
handlers = ["broken"]
[handlers.broken]
plugin = "collectors:Collect"
fail_always = true
retries = 0
queue = 100
[handlers.dlq]
plugin = "faultplugins:Gated"
delay = "1ms"
queue = {dlq_queue}
"""
    connections = 0

    async def counted(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await flood(ws)

    most = 0
    baseline = vmrss()
    with capture_logs() as logs:
        async with ws_server(counted) as url, running(text.replace("URL", url)) as svc:
            dlq = svc.runners["dlq"]
            with anyio.move_on_after(1.5):
                while True:
                    most = max(most, dlq.in_flight)
                    await anyio.sleep(0.005)
            peak = vmrss()
            conn = svc.connections["up"]
            read = conn.seq
            assert dlq.stats.received > 300  # the flood did reach the dead-letter handler
            assert_balanced(svc)
    print(
        f"\n{source}: read {read}, dead-letter queue peaked at {most} (limit {dlq_queue}), "
        f"RSS +{(peak - baseline) / MiB:.1f} MiB"
    )
    assert most <= dlq_queue + 2
    assert peak - baseline < 50 * MiB
    assert connections == 1  # waiting on the dead-letter queue did not trip the keepalive
    assert not events(logs, "keepalive_timeout")
    assert not events(logs, "delivery_unbalanced")
