"""The ``redis-stream`` source against a real redis-server (tests/redis_helpers.py).

Most tests run the daemon in-process (``conftest.running``); where a process must
die (SIGKILL, a handler that ``os._exit``s) the workers are real ``wsroute run``
subprocesses. Entries are written with XADD in the ``redis`` sink's field layout.
Every wait is bounded; timings are kept small with ``reclaim.min_idle`` of about
a second.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from wsroute import DeadLetter, Message
from wsroute.config import loads
from wsroute.exceptions import ConfigError
from wsroute.plugins.redis.entry import decode_frame, id_time
from wsroute.plugins.redis.group import autoclaim_reply, stream_entries
from wsroute.plugins.redis.source import RedisStreamSource, default_consumer
from wsroute.records import encode_record
from wsroute.service import plan
from wsroute.testing import wait_until

from collectors import Collect
from conftest import running
from redis_helpers import RedisServer, requires_redis

pytestmark = pytest.mark.anyio

PLUGIN = "wsroute.plugins.redis.source:RedisStreamSource"
STREAM = "{ticks}:in"
GROUP = "wsroute"
WSROUTE = str(Path(sys.executable).with_name("wsroute"))


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()


def entry(n: int, *, poison: bool = False, text: bool = True) -> dict[str, str | bytes]:
    """An entry as the ``redis`` sink writes it for a JSON text frame."""
    body: dict[str, Any] = {"type": "tick", "n": n}
    if poison:
        body["poison"] = True
    fields: dict[str, str | bytes] = {
        "frame": json.dumps(body).encode(),
        "connection": "exchange",
        "key": json.dumps("tick"),
        "seq": str(n),
        "received_at": f"{1_700_000_000 + n:.3f}",
    }
    if text:
        fields["kind"] = "text"
    return fields


async def produce(conn: aioredis.Redis, numbers: range, **kwargs: Any) -> list[str]:
    return [(await conn.xadd(STREAM, entry(n, **kwargs))).decode() for n in numbers]


async def pending(conn: aioredis.Redis) -> int:
    return int((await conn.xpending(STREAM, GROUP))["pending"])


CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "{shutdown}"

[sources.ticks]
type = "{plugin}"
url = "{url}"
stream = "{stream}"
consumer = "{consumer}"
read = {{ count = {count}, block = "100ms" }}
reclaim = {{ min_idle = "{min_idle}", every = "{every}" }}
{extra}

[routes.ticks]
connection = "ticks"
handlers = ["work"]

[handlers.work]
plugin = "collectors:Collect"
{work}

[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(
    url: str,
    *,
    consumer: str = "w1",
    extra: str = "",
    work: str = "",
    shutdown: str = "2s",
    min_idle: str = "1s",
    every: str = "200ms",
    count: int = 100,
) -> str:
    return CONFIG.format(
        plugin=PLUGIN,
        url=url,
        stream=STREAM,
        consumer=consumer,
        extra=extra,
        work=work,
        shutdown=shutdown,
        min_idle=min_idle,
        every=every,
        count=count,
    )


def source_of(service: Any, name: str = "ticks") -> RedisStreamSource:
    instance = service.sources[name].instance
    assert isinstance(instance, RedisStreamSource)
    return instance


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# -- pure parts: no server -----------------------------------------------------


def test_entry_frame_takes_seq_and_time_from_the_entry() -> None:
    fields = {b"frame": b'{"a": 1}', b"kind": b"text", b"seq": b"7", b"received_at": b"12.5"}
    frame = decode_frame("ticks", "1700000000123-0", fields)
    assert frame.data == '{"a": 1}'
    assert (frame.connection, frame.seq, frame.received_at) == ("ticks", 7, 12.5)
    binary = decode_frame("ticks", "1700000000123-4", {b"frame": b"\x01\x02"})
    assert binary.data == b"\x01\x02"
    assert (binary.seq, binary.received_at) == (0, 1700000000.123)


@pytest.mark.parametrize(
    "fields",
    [
        {b"connection": b"x"},
        {b"frame": b"\xff", b"kind": b"text"},
        {b"frame": b"x", b"seq": b"seven"},
        {b"frame": b"x", b"received_at": b"nan"},
    ],
)
def test_a_malformed_entry_is_a_value_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_frame("ticks", "1-0", fields)


def test_replies_of_both_protocols_parse_alike() -> None:
    entries = [(b"1-0", {b"frame": b"x"}), (b"2-0", {})]
    expected = [("1-0", {b"frame": b"x"}), ("2-0", None)]
    assert stream_entries([[b"s", entries]]) == expected
    assert stream_entries({b"s": [entries]}) == expected
    # As Redis sent them (the source's client keeps XREADGROUP's reply raw).
    raw = [[b"1-0", [b"frame", b"x"]], [b"2-0", None]]
    assert stream_entries([[b"s", raw]]) == expected
    assert stream_entries({b"s": raw}) == expected
    assert stream_entries({b"s": []}) == stream_entries({b"s": [[]]}) == []
    assert stream_entries([]) == []
    assert stream_entries(None) == []
    cursor, claimed, deleted = autoclaim_reply([b"0-0", entries, [b"3-0"]])
    assert (cursor, claimed, deleted) == ("0-0", expected, ["3-0"])
    assert autoclaim_reply([b"5-0", []]) == ("5-0", [], [])  # Redis 6.2: no third element
    assert id_time("1500-2") == 1.5


def test_default_consumer_is_hostname_and_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSROUTE_INSTANCE", "worker-3")
    assert default_consumer().endswith(":worker-3")
    monkeypatch.delenv("WSROUTE_INSTANCE")
    assert default_consumer().endswith(":1")


def test_check_needs_a_dead_letter_handler_for_max_deliveries() -> None:
    text = config("redis://127.0.0.1:1/0", extra="max_deliveries = 3")
    text = text.replace('dead_letter = "dlq"\n', "")
    with pytest.raises(ConfigError) as error:
        plan(loads(text))
    assert "sources.ticks: max_deliveries needs a dead-letter handler" in str(error.value)


def test_check_warns_when_min_idle_is_not_above_the_handler_budget() -> None:
    text = config("redis://127.0.0.1:1/0", min_idle="10s", work='timeout = "5s"\nretries = 1')
    warnings = [str(w) for w in plan(loads(text)).config.warnings]
    assert any("sources.ticks.reclaim.min_idle" in w and '"work"' in w for w in warnings)
    quiet = config("redis://127.0.0.1:1/0", min_idle="30s", work='timeout = "5s"\nretries = 1')
    assert not [w for w in plan(loads(quiet)).config.warnings if "min_idle" in str(w)]


def test_options_are_checked_with_their_key_paths() -> None:
    text = config("redis://127.0.0.1:1/0", extra='create_group = "latest"\nlease = "yes"')
    text = text.replace('block = "100ms"', 'block = "0s"')
    with pytest.raises(ConfigError) as error:
        plan(loads(text))
    message = str(error.value)
    assert "sources.ticks.create_group" in message
    assert "sources.ticks.lease" in message
    assert "sources.ticks.read: read.block must be at least 1ms" in message


def test_a_url_of_another_scheme_is_refused_without_showing_it() -> None:
    text = config("http://user:s3cret@example.com/0")
    with pytest.raises(ConfigError) as error:
        plan(loads(text))
    message = str(error.value)
    assert "sources.ticks.url: must be redis://, rediss:// or unix://, not 'http'" in message
    assert "s3cret" not in message


# -- against a real server -----------------------------------------------------


@requires_redis
async def test_entries_are_decoded_routed_and_acknowledged(
    server: RedisServer, client: aioredis.Redis
) -> None:
    ids = await produce(client, range(1, 4))
    binary = dict(entry(4, text=False))
    ids.append((await client.xadd(STREAM, binary)).decode())
    bad = (await client.xadd(STREAM, {"frame": b"not json", "kind": "text"})).decode()
    no_frame = (await client.xadd(STREAM, {"connection": "exchange"})).decode()
    async with running(config(server.url)) as service:
        await wait_until(lambda: len(Collect.seen["work"]) == 4 and len(Collect.seen["dlq"]) == 2)
        await wait_until(lambda: source_of(service).stats.acked == 6)
        assert await pending(client) == 0
        stats = source_of(service).stats
    seen = Collect.seen["work"]
    assert [m.fields["stream_id"] for m in seen] == ids
    first = seen[0]
    assert first.connection == "ticks"
    assert first.key == "tick"
    assert first.body == {"type": "tick", "n": 1}
    assert (first.seq, first.received_at) == (1, 1_700_000_001.0)
    assert first.fields["source_connection"] == "exchange"
    assert isinstance(first.raw, str)
    assert isinstance(seen[3].raw, bytes)
    letters = {m.fields["stream_id"]: m.dead_letter for m in Collect.seen["dlq"]}
    assert set(letters) == {bad, no_frame}
    assert {d.reason for d in letters.values() if d} == {"decode_error"}
    assert (stats.read, stats.delivered, stats.dead_lettered) == (6, 4, 2)
    assert (stats.trimmed_unprocessed, stats.reclaimed) == (0, 0)


@requires_redis
async def test_message_records_and_forwarded_dead_letters_are_rebuilt(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """``kind = "message"`` entries carry a jsonl record (no raw frame): rebuilt, not decoded."""
    emitted = Message("exchange", "tick", {"n": 9}, fields={"opcode": 2}, seq=9, received_at=5.0)
    lifecycle = Message("exchange", "$connected", {"outage": 1.5}, seq=10, received_at=6.0)
    ids = []
    for message in (emitted, lifecycle):
        record = encode_record(message)[:-1]
        fields = {"frame": record, "kind": "message", "connection": "exchange", "seq": "1"}
        ids.append((await client.xadd(STREAM, fields)).decode())
    letter = dict(entry(11), reason="handler_error", handler="db", error="boom", attempts="4")
    ids.append((await client.xadd(STREAM, letter)).decode())
    async with running(config(server.url)) as service:
        await wait_until(lambda: source_of(service).stats.acked == 3)
        assert await pending(client) == 0
    rebuilt, forwarded = Collect.seen["work"]  # "$connected" needs a route naming it
    assert (rebuilt.connection, rebuilt.key, rebuilt.body) == ("ticks", "tick", {"n": 9})
    assert (rebuilt.seq, rebuilt.received_at) == (9, 5.0)
    assert rebuilt.fields == {"opcode": 2, "stream_id": ids[0], "source_connection": "exchange"}
    assert forwarded.body == {"type": "tick", "n": 11}
    assert forwarded.dead_letter == DeadLetter("handler_error", "db", "boom", 4)


@requires_redis
async def test_a_stop_leaves_unfinished_entries_pending_and_the_restart_takes_them_first(
    server: RedisServer, client: aioredis.Redis
) -> None:
    old = await produce(client, range(1, 11))
    slow = config(server.url, min_idle="60s", work='delay = "150ms"', shutdown="200ms")
    async with running(slow) as service:
        await wait_until(lambda: len(Collect.seen["work"]) >= 1)
        first_run = source_of(service)
    handled_before = [m.fields["stream_id"] for m in Collect.seen["work"]]
    assert 0 < len(handled_before) < 10
    assert first_run.stats.acked == len(handled_before)  # what finished was acknowledged
    assert await pending(client) == 10 - len(handled_before)  # the rest stays pending
    new = await produce(client, range(11, 16))
    Collect.reset()
    started = time.monotonic()
    # Same consumer name: its pending entries come back at once, not after min_idle (60s).
    async with running(config(server.url, min_idle="60s")) as service:
        await wait_until(lambda: len(Collect.seen["work"]) == 15 - len(handled_before))
        took = time.monotonic() - started
        await wait_until(lambda: source_of(service).stats.acked == 15 - len(handled_before))
        stats = source_of(service).stats
    order = [m.fields["stream_id"] for m in Collect.seen["work"]]
    leftovers = [i for i in old if i not in handled_before]
    assert order[: len(leftovers)] == leftovers  # own pending entries first ...
    assert order[len(leftovers) :] == new  # ... then new ones
    assert stats.recovered == len(leftovers)
    assert took < 60
    assert await pending(client) == 0


@requires_redis
async def test_a_handler_failure_is_retried_dead_lettered_and_acked_once(
    server: RedisServer, client: aioredis.Redis
) -> None:
    ids = await produce(client, range(1, 6))
    failing = 'fail_always = true\nretries = 2\ntimeout = "1s"\nconcurrency = 5'
    async with running(config(server.url, min_idle="500ms", work=failing)) as service:
        await wait_until(lambda: source_of(service).stats.acked == 5)
        assert await pending(client) == 0
        # Well past min_idle + every: no entry comes back from Redis.
        await anyio.sleep(1.0)
        stats = source_of(service).stats
        assert Collect.attempts["work"] == 5 * 3  # wsroute's own retries, once per entry
        assert (stats.read, stats.reclaimed, stats.acked) == (5, 0, 5)
    letters = Collect.seen["dlq"]
    assert sorted(m.fields["stream_id"] for m in letters) == sorted(ids)
    assert {m.dead_letter.reason for m in letters if m.dead_letter} == {"handler_error"}


@requires_redis
async def test_reading_stops_while_max_in_flight_entries_are_unsettled(
    server: RedisServer, client: aioredis.Redis
) -> None:
    await produce(client, range(1, 41))
    slow = 'delay = "100ms"'
    text = config(server.url, count=5, work=slow, extra="max_in_flight = 5", shutdown="100ms")
    async with running(text):
        await wait_until(lambda: len(Collect.seen["work"]) >= 3)
        most = 0
        for _ in range(10):
            most = max(most, await pending(client))
            await anyio.sleep(0.05)
    # Unsettled at most 5, plus the one settled whose XACK is on its way.
    assert 0 < most <= 6


@requires_redis
async def test_the_lease_keeps_a_slow_entry_from_another_worker(
    server: RedisServer, client: aioredis.Redis
) -> None:
    for lease in (True, False):
        Collect.reset()
        await client.delete(STREAM)
        ids = await produce(client, range(1, 4))
        holder = config(
            server.url,
            consumer="slow",
            min_idle="600ms",
            every="10s",  # its own reclaim stays out of the way
            work='delay = "2s"\nconcurrency = 3',
            extra=f"lease = {str(lease).lower()}",
        )
        thief = config(server.url, consumer="fast", min_idle="800ms", every="100ms")
        thief = thief.replace('"work"', '"steal"').replace("[handlers.work]", "[handlers.steal]")
        async with running(holder) as slow_service:
            await wait_until(lambda: Collect.attempts["work"] == 3)
            async with running(thief) as fast_service:
                await wait_until(lambda: len(Collect.seen["work"]) == 3, timeout=6)
                await wait_until(lambda: source_of(slow_service).stats.acked == 3)
                stolen = source_of(fast_service).stats.reclaimed
        assert await pending(client) == 0
        handled = [m.fields["stream_id"] for m in Collect.seen["work"] + Collect.seen["steal"]]
        if lease:
            assert stolen == 0
            assert sorted(handled) == sorted(ids)  # once each
        else:
            # Idle past the thief's min_idle: taken over and handled twice (docs/scale-out.md).
            assert stolen == 3
            assert sorted(handled) == sorted(ids * 2)


@requires_redis
async def test_pending_entries_trimmed_away_are_counted_and_logged(
    server: RedisServer, client: aioredis.Redis
) -> None:
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = await produce(client, range(1, 5))
    # Two entries pending at a worker that died, two at this worker's own name.
    await client.xreadgroup(GROUP, "dead-worker", {STREAM: ">"}, count=2)
    await client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=2)
    await client.xtrim(STREAM, maxlen=0, approximate=False)
    with capture_logs() as logs:
        async with running(config(server.url, min_idle="300ms")) as service:
            await wait_until(lambda: source_of(service).stats.trimmed_unprocessed == 4)
            await wait_until(lambda: source_of(service).stats.acked >= 2)
            assert await pending(client) == 0
    assert not Collect.seen["work"]
    found = events(logs, "trimmed_unprocessed")
    assert {e["found_by"] for e in found} == {"xreadgroup", "xautoclaim"}
    assert sorted(i for e in found for i in e["ids"]) == sorted(ids)
    assert all(e["log_level"] == "error" for e in found)


@requires_redis
async def test_a_flushed_redis_gets_its_group_back_and_reading_goes_on(
    server: RedisServer, client: aioredis.Redis
) -> None:
    with capture_logs() as logs:
        async with running(config(server.url)) as service:
            await produce(client, range(1, 4))
            await wait_until(lambda: len(Collect.seen["work"]) == 3)
            await client.flushall()
            later = await produce(client, range(4, 7))
            await wait_until(lambda: len(Collect.seen["work"]) == 6)
            await wait_until(lambda: source_of(service).stats.acked == 6)
            assert source_of(service).stats.groups_recreated == 1
            assert await pending(client) == 0
    assert [m.fields["stream_id"] for m in Collect.seen["work"][3:]] == later
    recreated = events(logs, "group_recreated")
    assert len(recreated) == 1
    assert recreated[0]["log_level"] == "error"
    assert not events(logs, "source_crashed")


@requires_redis
async def test_an_outage_is_retried_with_backoff_and_reading_goes_on(
    server: RedisServer, client: aioredis.Redis
) -> None:
    with capture_logs() as logs:
        async with running(config(server.url)) as service:
            await produce(client, range(1, 3))
            await wait_until(lambda: len(Collect.seen["work"]) == 2)
            server.stop()
            await anyio.sleep(2.0)
            server.start()
            await client.connection_pool.disconnect()
            later = await produce(client, range(3, 6))
            await wait_until(lambda: len(Collect.seen["work"]) == 5, timeout=15)
            await wait_until(lambda: source_of(service).stats.acked == 5)
            stats = source_of(service).stats
    assert [m.fields["stream_id"] for m in Collect.seen["work"][2:]] == later
    assert stats.redis_errors >= 2
    assert events(logs, "redis_unavailable")
    assert events(logs, "redis_recovered")
    reader = [e["delay"] for e in events(logs, "redis_retry") if e["op"] == "xreadgroup"]
    assert len(reader) >= 3
    assert max(reader) > min(reader)  # it backs off
    assert not events(logs, "source_crashed")


@requires_redis
async def test_a_redis_crash_loses_no_entry_it_had_written_to_disk(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """SIGKILL with appendfsync everysec: what Redis had for over a second survives.

    The producer waits 1.5 s after its last XADD before the kill, so every entry
    it got an ID for is in the fsynced AOF (everysec: at most ~1 s of writes is
    lost). Acknowledgements of the last second may be lost, so entries can be
    handled twice: at least once, never zero times.
    """
    slow = 'delay = "50ms"'
    with capture_logs() as logs:
        async with running(config(server.url, work=slow)) as service:
            ids = await produce(client, range(1, 41))
            await anyio.sleep(1.5)
            handled_at_kill = len(Collect.seen["work"])
            server.kill()
            await anyio.sleep(0.5)
            server.start()
            await client.connection_pool.disconnect()
            ids += await produce(client, range(41, 46))
            wanted = set(ids)

            def all_handled() -> bool:
                return wanted <= {m.fields["stream_id"] for m in Collect.seen["work"]}

            await wait_until(all_handled, timeout=15)
            await wait_until(lambda: not source_of(service).ledger.to_ack, timeout=5)
            # Acks lost with the crash come back as pending: reclaimed after min_idle.
            for _ in range(50):
                if await pending(client) == 0:
                    break
                await anyio.sleep(0.1)
            assert await pending(client) == 0
    assert 0 < handled_at_kill < 40  # the crash hit in the middle of the work
    assert events(logs, "redis_unavailable")
    assert events(logs, "redis_recovered")
    assert not events(logs, "source_crashed")


# -- real worker processes -----------------------------------------------------

WORKER_PLUGIN = '''
"""A handler for the redis-stream worker tests, loaded by real `wsroute run` processes."""

import json
import os
import time
from dataclasses import dataclass

import anyio

from wsroute import Duration, HandlerContext, Message


class Record:
    """Append {"id", "n", "at"} per handled message to a file; os._exit(1) on a poison one."""

    @dataclass
    class Options:
        path: str
        delay: Duration = Duration(0.0)
        crash_on_poison: bool = False

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.fd = os.open(options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def handle(self, message: Message) -> None:
        if self.options.crash_on_poison and message.body.get("poison"):
            os._exit(1)
        if self.options.delay:
            await anyio.sleep(self.options.delay)
        line = {"id": message.fields["stream_id"], "n": message.body["n"], "at": time.time()}
        os.write(self.fd, (json.dumps(line) + "\\n").encode())
'''

WORKER_CONFIG = """
[daemon]
log_format = "json"
shutdown_timeout = "2s"
dead_letter = "dlq"
plugin_paths = ["{plugins}"]

[sources.ticks]
type = "{plugin}"
url = "{url}"
stream = "{stream}"
consumer = "{consumer}"
read = {{ count = 5, block = "100ms" }}
reclaim = {{ min_idle = "{min_idle}", every = "{every}" }}
max_in_flight = 5
{extra}

[routes.ticks]
connection = "ticks"
handlers = ["record"]

[handlers.record]
plugin = "worker_plugins:Record"
path = "{folder}/{consumer}.done.jsonl"
{record}

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead.jsonl"
"""


class Worker:
    """One `wsroute run` worker process; its log and its handled file live in ``folder``."""

    def __init__(self, folder: Path, consumer: str, url: str, **options: str) -> None:
        plugins = folder / "plugins"
        if not plugins.exists():
            plugins.mkdir(mode=0o700)
            module = plugins / "worker_plugins.py"
            module.write_text(WORKER_PLUGIN)
            module.chmod(0o600)
        self.folder = folder
        self.consumer = consumer
        self.config = folder / f"{consumer}.toml"
        values = {"min_idle": "1s", "every": "200ms", "extra": "", "record": "", **options}
        self.config.write_text(
            WORKER_CONFIG.format(
                plugins=plugins,
                plugin=PLUGIN,
                url=url,
                stream=STREAM,
                consumer=consumer,
                folder=folder,
                **values,
            )
        )
        self.log_path = folder / f"{consumer}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [WSROUTE, "run", "-c", str(self.config)], stdout=log, stderr=log
            )

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.wait()

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def done(self) -> list[dict[str, Any]]:
        path = self.folder / f"{self.consumer}.done.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in logged if e.get("event") == name]


@contextlib.contextmanager
def workers(*started: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        yield started
    finally:
        for worker in started:
            worker.ensure_stopped()


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def sync_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@requires_redis
@pytest.mark.slow
def test_a_worker_killed_mid_handle_leaves_its_entries_to_the_others(
    tmp_path: Path, server: RedisServer
) -> None:
    r = sync_client(server)
    slow = 'delay = "100ms"'
    with workers(*(Worker(tmp_path, f"w{n}", server.url, record=slow) for n in (1, 2, 3))) as ws:
        for worker in ws:
            worker.start()

        def consumers() -> int:
            try:
                return len(r.xinfo_consumers(STREAM, GROUP))
            except redis.ResponseError:  # the group is not created yet
                return 0

        poll(lambda: consumers() == 3, 20, "three consumers in the group")
        ids = [r.xadd(STREAM, entry(n)).decode() for n in range(1, 61)]
        victim, *others = ws
        poll(lambda: len(victim.done()) >= 2, 10, "the victim to handle something")
        assert victim.signal(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.time()
        orphans = {
            row["message_id"].decode()
            for row in r.xpending_range(STREAM, GROUP, "-", "+", 100, consumername="w1")
        }
        assert orphans, "the victim held nothing: it was not killed mid-handle"

        def handled() -> set[str]:
            return {row["id"] for w in ws for row in w.done()}

        poll(lambda: set(ids) <= handled(), 30, "every entry handled")
        poll(lambda: r.xpending(STREAM, GROUP)["pending"] == 0, 10, "an empty pending list")
        for worker in others:
            assert worker.signal(signal.SIGTERM) == 0
    rescued = {row["id"]: row["at"] for w in others for row in w.done() if row["id"] in orphans}
    assert set(rescued) == orphans
    picked_up = max(rescued.values()) - killed_at
    # min_idle (1s) + every (200ms) + the handlers' time for 5 entries, with slack.
    assert picked_up < 1.0 + 0.2 + 5 * 0.1 + 3.0
    assert sum(len(w.events("entries_reclaimed")) for w in others) >= 1
    print(f"orphans={len(orphans)} picked up within {picked_up:.2f}s of the kill")


@requires_redis
@pytest.mark.slow
def test_an_entry_that_kills_the_worker_is_dead_lettered_after_max_deliveries(
    tmp_path: Path, server: RedisServer
) -> None:
    r = sync_client(server)
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [r.xadd(STREAM, entry(n, poison=n == 2)).decode() for n in range(1, 5)]
    poison = ids[1]
    worker = Worker(
        tmp_path,
        "w1",
        server.url,
        min_idle="30s",
        extra="max_deliveries = 2",
        record="crash_on_poison = true",
    )
    with workers(worker):
        # Delivered once by XREADGROUP, once more on the restart: both crash the process.
        for _ in range(2):
            worker.start()
            assert worker.wait() == 1
        worker.start()
        dead = tmp_path / "dead.jsonl"
        poll(lambda: dead.exists() and dead.read_text().count("\n") == 1, 20, "a dead letter")
        poll(lambda: r.xpending(STREAM, GROUP)["pending"] == 0, 10, "an empty pending list")
        handled = {row["id"] for row in worker.done()}
        assert worker.signal(signal.SIGTERM) == 0
    assert handled == set(ids) - {poison}
    letter = json.loads(dead.read_text())
    assert letter["reason"] == "max_deliveries"
    assert f"entry {poison} delivered 3 times" in letter["error"]
    assert letter["fields"]["stream_id"] == poison
    assert letter["fields"]["delivery_count"] == 3
    assert letter["body"] == {"type": "tick", "n": 2, "poison": True}
    exceeded = worker.events("max_deliveries_exceeded")
    assert [(e["stream_id"], e["deliveries"]) for e in exceeded] == [(poison, 3)]
