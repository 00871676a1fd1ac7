"""The ``redis`` sink against a real redis-server started by the tests.

The server runs without persistence in tmp_path on a free port (with AOF for
the restart under the daemon); an outage is the server really stopped, and the
recovery the server really started again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from wsroute import ConfigError, DeadLetter, Message
from wsroute.plugins.redis.batcher import Batcher, PipelineError
from wsroute.plugins.redis.entry import encode_entry
from wsroute.plugins.redis.roundtrip import Link, round_trip
from wsroute.plugins.redis.shards import shard_of
from wsroute.plugins.redis.sink import RedisHandler
from wsroute.records import parse_record
from wsroute.testing import (
    RecordingContext,
    ScriptedUpstream,
    build_handler,
    message,
)

from conftest import need
from redis_helpers import RedisServer

needs_redis = need("redis-server")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(server: RedisServer) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url)


# --------------------------------------------------------------------------- entry fields


def test_binary_frame_is_written_byte_for_byte() -> None:
    raw = b"\x01\x00\x00\x00" + b'{"price": 1.5}'
    msg = Message("exchange", 1, {"price": 1.5}, raw=raw, seq=42, received_at=1700000000.125)
    assert encode_entry(msg) == {
        "frame": raw,
        "connection": "exchange",
        "key": "1",
        "seq": "42",
        "received_at": "1700000000.125",
    }


def test_text_frame_is_utf8_with_kind_text() -> None:
    msg = Message("news", "news", {"headline": "é"}, raw='{"headline": "é"}', seq=1)
    fields = encode_entry(msg)
    assert fields["frame"] == '{"headline": "é"}'.encode()
    assert fields["kind"] == "text"
    assert fields["key"] == '"news"'


def test_message_without_raw_frame_carries_its_record() -> None:
    # A lifecycle message has no raw frame: a worker rebuilds it from the record.
    msg = Message("exchange", "$connected", {"outage": 1.5}, seq=9, received_at=1700000000.5)
    fields = encode_entry(msg)
    assert fields["kind"] == "message"
    assert fields["key"] == '"$connected"'
    frame = fields["frame"]
    assert isinstance(frame, bytes)
    assert parse_record(frame) == msg


def test_dead_letter_adds_its_reason() -> None:
    dead = DeadLetter(reason="timeout", handler="archive", error="TimeoutError", attempts=4)
    fields = encode_entry(Message("c", None, b"x", raw=b"x", dead_letter=dead))
    assert (fields["reason"], fields["handler"], fields["attempts"]) == ("timeout", "archive", "4")


def test_options_need_exactly_one_target() -> None:
    with pytest.raises(ConfigError, match="exactly one of stream"):
        build_handler("redis", {})
    with pytest.raises(ConfigError, match="exactly one of stream"):
        build_handler("redis", {"stream": "s", "channel": "c"})
    with pytest.raises(ConfigError, match="redis://"):
        build_handler("redis", {"stream": "s", "url": "http://user:secret@host/"})


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        build_handler("redis", {"stream": "s", "url": "http://user:secret@host/"})
    assert "secret" not in str(info.value)


CHECK_CONFIG = '[handlers.q]\nplugin = "redis"\nstream = "s"\n'


def test_missing_extra_is_named_by_check(tmp_path: Path) -> None:
    # The client library hidden from a real `wsroute check` in a subprocess.
    config = tmp_path / "wsroute.toml"
    config.write_text(CHECK_CONFIG)
    code = (
        "import sys; sys.modules['redis'] = None; from wsroute.cli import main; "
        "sys.exit(main(['check', '-c', sys.argv[1]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "pip install 'wsroute[redis]'" in result.stderr


# --------------------------------------------------------------------------- batcher (no I/O)


@pytest.mark.anyio
async def test_batcher_sends_what_waits_in_one_flush() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        await anyio.sleep(0.05)  # a round trip: the others queue meanwhile
        return [ValueError("odd") if n % 2 else n * 10 for n in items]

    batcher = Batcher(flush)
    results: dict[int, Any] = {}

    async def submit(n: int) -> None:
        try:
            results[n] = await batcher.submit(n)
        except ValueError as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(submit, n)
    assert sorted(n for batch in batches for n in batch) == list(range(10))
    assert len(batches) < 10
    assert all(results[n] == n * 10 for n in range(0, 10, 2))
    assert all(isinstance(results[n], ValueError) for n in range(1, 10, 2))


@pytest.mark.anyio
async def test_batcher_failure_fails_the_whole_batch_and_recovers() -> None:
    calls = 0

    async def flush(items: list[Any]) -> list[Any]:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.02)
        if calls == 2:
            raise ConnectionError("connection lost")
        return list(items)

    batcher = Batcher(flush)
    outcomes: list[str] = []

    async def submit(n: int) -> None:
        try:
            await batcher.submit(n)
        except (ConnectionError, PipelineError) as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("ok")

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, 0)
        await anyio.sleep(0.005)  # the first flush is under way
        for n in range(1, 6):
            tg.start_soon(submit, n)
    # the first flush carries one item, the second (failing) the five that queued
    assert outcomes.count("ok") == 1
    assert outcomes.count("ConnectionError") == 1  # the caller that sent it sees the cause
    assert outcomes.count("PipelineError") == 4
    assert await batcher.submit(99) == 99


@pytest.mark.anyio
async def test_batcher_forgets_a_cancelled_waiter() -> None:
    sent: list[int] = []
    release = anyio.Event()

    async def flush(items: list[Any]) -> list[Any]:
        sent.extend(items)
        await release.wait()
        return list(items)

    batcher = Batcher(flush)
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.submit, 1)
        await anyio.sleep(0.01)
        with anyio.move_on_after(0.05):
            await batcher.submit(2)  # waits behind 1, then gives up
        release.set()
    assert await batcher.submit(3) == 3
    assert sent == [1, 3]


# --------------------------------------------------------------------------- real Redis


@needs_redis
@pytest.mark.anyio
async def test_xadd_writes_the_entry_fields(redis_server: RedisServer) -> None:
    handler = build_handler("redis", {"url": redis_server.url, "stream": "{ticks}:in"})
    await handler.start()
    try:
        raw = b"\x01\x00\x00\x00{}"
        await handler.handle(message({}, key=1, raw=raw, seq=7, received_at=1700000000.25))
        await handler.handle(message({"a": 1}, key="news", raw='{"a": 1}', seq=8))
    finally:
        await handler.stop()
    async with client(redis_server) as redis:
        entries = await redis.xrange("{ticks}:in")
    assert len(entries) == 2
    first = entries[0][1]
    assert first == {
        b"frame": raw,
        b"connection": b"test",
        b"key": b"1",
        b"seq": b"7",
        b"received_at": b"1700000000.25",
    }
    assert entries[1][1][b"kind"] == b"text"
    assert entries[1][1][b"frame"] == b'{"a": 1}'


@needs_redis
@pytest.mark.anyio
async def test_stream_is_trimmed_to_about_max_len(redis_server: RedisServer) -> None:
    handler = build_handler("redis", {"url": redis_server.url, "stream": "trimmed", "max_len": 10})
    await handler.start()
    try:
        for seq in range(1, 501):
            await handler.handle(message(None, raw=b"x", seq=seq))
    finally:
        await handler.stop()
    async with client(redis_server) as redis:
        length = await redis.xlen("trimmed")
        last = await redis.xrevrange("trimmed", count=1)
    # MAXLEN ~ trims whole radix-tree nodes: about, never fewer than max_len.
    assert 10 <= length < 500
    assert last[0][1][b"seq"] == b"500"


@needs_redis
@pytest.mark.anyio
async def test_concurrent_calls_share_round_trips(redis_server: RedisServer) -> None:
    handler: RedisHandler = build_handler("redis", {"url": redis_server.url, "stream": "batch"})
    await handler.start()
    try:
        async with anyio.create_task_group() as tg:
            for seq in range(1, 201):
                tg.start_soon(handler.handle, message(None, raw=b"x", seq=seq))
    finally:
        await handler.stop()
    async with client(redis_server) as redis:
        assert await redis.xlen("batch") == 200
    assert handler.round_trips < 200


@needs_redis
@pytest.mark.anyio
async def test_publish_sends_the_json_record(redis_server: RedisServer) -> None:
    handler = build_handler("redis", {"url": redis_server.url, "channel": "ticks"})
    async with client(redis_server) as redis, redis.pubsub() as pubsub:
        await pubsub.subscribe("ticks")
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        await handler.start()
        try:
            await handler.handle(message({"price": 2}, key=1, connection="exchange", seq=3))
        finally:
            await handler.stop()
        got = None
        with anyio.fail_after(5):
            while got is None:
                got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    record = json.loads(got["data"])
    assert (record["connection"], record["key"], record["seq"], record["body"]) == (
        "exchange",
        1,
        3,
        {"price": 2},
    )


@needs_redis
@pytest.mark.anyio
async def test_server_down_at_start_is_only_logged(redis_server: RedisServer) -> None:
    redis_server.stop()
    ctx = RecordingContext("r")
    handler = build_handler(
        "redis", {"url": redis_server.url, "stream": "s", "socket_timeout": "1s"}, ctx=ctx
    )
    with capture_logs() as logs:
        await handler.start()  # does not raise: the daemon must start without its targets
    assert [e["event"] for e in logs] == ["redis_unavailable"]
    try:
        with pytest.raises(Exception, match=r"(?i)connect"):
            await handler.handle(message(None, raw=b"x"))
        redis_server.start()
        await handler.handle(message(None, raw=b"x"))  # recovers with the server
    finally:
        await handler.stop()


# --------------------------------------------------------------------------- round_trip


@needs_redis
@pytest.mark.anyio
async def test_round_trip_puts_each_reply_in_its_place(redis_server: RedisServer) -> None:
    link = Link(redis_server.url, timeout=5.0)
    try:
        commands = [("SET", "k", "v"), ("XADD", "k", "*", "f", b"v"), ("GET", "k"), ("INCR", "n")]
        replies = await round_trip(link, commands)
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError)  # WRONGTYPE: that command alone
        assert replies[2:] == [b"v", 1]
        # The connection went back to the link in step: the next round trip reads its own.
        assert await round_trip(link, [("GET", "k"), ("INCR", "n")]) == [b"v", 2]
    finally:
        await link.aclose()


@needs_redis
@pytest.mark.anyio
async def test_round_trip_fails_while_redis_is_down_and_works_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    link = Link(redis_server.url, timeout=5.0)
    try:
        assert await round_trip(link, [("INCR", "n")]) == [1]
        redis_server.stop()
        with pytest.raises(RedisConnectionError):
            await round_trip(link, [("INCR", "n")], retry_stale=True)
        redis_server.start()  # no persistence: n starts over
        assert await round_trip(link, [("INCR", "n")], retry_stale=True) == [1]
    finally:
        await link.aclose()


# --------------------------------------------------------------------------- the daemon, an outage

CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "5s"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["ticks"]

[handlers.ticks]
plugin = "redis"
url = "${REDIS_URL}"
stream = "${STREAM}"
shards = ${SHARDS}
${EXTRA}

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


def _config(stream: str, shards: int, extra: str = "") -> str:
    text = CONFIG.replace("${STREAM}", stream).replace("${SHARDS}", str(shards))
    return text.replace("${EXTRA}", extra)


def _frame_numbers(entries: list[Any]) -> list[int]:
    return [json.loads(fields[b"frame"])["n"] for _, fields in entries]


@needs_redis
@pytest.mark.anyio
@pytest.mark.parametrize("batch", ["", "batch = { max = 100, wait = 0 }"], ids=["handle", "batch"])
async def test_redis_restarted_mid_stream_loses_nothing(
    tmp_path: Path, wsroute_daemon: Any, batch: str
) -> None:
    """AOF on (as in production): redis-server stopped under the sink for a second and
    started again while frames keep coming; every frame stored, none dead-lettered."""
    server = RedisServer(tmp_path / "aof", persistent=True)
    server.start()
    upstream = ScriptedUpstream()
    count = 60
    try:
        with capture_logs() as logs:
            env = {"REDIS_URL": server.url}
            async with wsroute_daemon(
                _config("ticks", 1, batch), upstream=upstream, environ=env
            ) as daemon:
                await daemon.wait_until(lambda: upstream.connected == 1)
                for n in range(1, count + 1):
                    await upstream.send(json.dumps({"type": "tick", "n": n}))
                    if n == 20:
                        await daemon.wait_until(lambda: daemon.stats("ticks")["handled"] == 20)
                        await anyio.to_thread.run_sync(server.stop)
                    if n == 40:  # 20 frames held meanwhile
                        assert daemon.stats("ticks")["outage"] == 1
                        await anyio.to_thread.run_sync(server.start)
                    await anyio.sleep(0.02)
                await daemon.wait_until(
                    lambda: daemon.stats("ticks")["handled"] == count, timeout=15
                )
                stats = daemon.stats("ticks")
                dead_file = daemon.tmp_path / "dead.jsonl"
        async with client(server) as redis:
            entries = await redis.xrange("ticks")
    finally:
        server.stop()
    numbers = _frame_numbers(entries)
    assert sorted(set(numbers)) == list(range(1, count + 1))  # at least once, in order
    assert numbers == sorted(numbers)
    assert stats["dead_lettered"] == 0
    assert stats["failures"] == 0
    assert not dead_file.exists() or not dead_file.read_text()
    assert len([e for e in logs if e["event"] == "redis_unavailable"]) == 1
    assert [e["event"] for e in logs if e["event"] == "redis_recovered"] == ["redis_recovered"]


@needs_redis
@pytest.mark.anyio
async def test_wrongtype_dead_letters_that_message_while_the_rest_flow(
    redis_server: RedisServer, wsroute_daemon: Any
) -> None:
    # Two route keys on two shards; one shard's key is a string: XADD there is WRONGTYPE.
    keys = ["good", "bad", "other", "more", "again"]
    bad = next(k for k in keys[1:] if shard_of(json.dumps(k), 2) != shard_of('"good"', 2))
    stream = "{ticks.%d}:in"
    async with client(redis_server) as redis:
        await redis.set(stream % shard_of(json.dumps(bad), 2), "not a stream")
    upstream = ScriptedUpstream()
    env = {"REDIS_URL": redis_server.url}
    async with wsroute_daemon(_config(stream, 2), upstream=upstream, environ=env) as daemon:
        await daemon.wait_until(lambda: upstream.connected == 1)
        for n in range(1, 7):
            await upstream.send(json.dumps({"type": bad if n == 3 else "good", "n": n}))
        await daemon.wait_until(lambda: daemon.stats("ticks")["handled"] == 5, timeout=10)
        await daemon.wait_until(lambda: daemon.stats("ticks")["dead_lettered"] == 1)
        stats = daemon.stats("ticks")
        dead_file = daemon.tmp_path / "dead.jsonl"
    dead = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [(d["body"]["n"], d["reason"]) for d in dead] == [(3, "handler_error")]
    assert "WRONGTYPE" in dead[0]["error"]
    assert stats["failures"] == 4  # a refusal: the first attempt and the default 3 retries
    assert stats["outage"] == 0
    async with client(redis_server) as redis:
        good = await redis.xrange(stream % shard_of('"good"', 2))
    assert _frame_numbers(good) == [1, 2, 4, 5, 6]
