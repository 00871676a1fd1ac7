"""The ingest side of scale-out: the ``redis`` sink's stream options against a real Redis.

``min_age``, ``pack`` (read back by a real worker), ``shards``, round trips
(``handle_batch`` with the ``batch`` delivery key, or concurrent ``handle()``
calls sharing one), and the HA pairs of ``dedupe``: two real ``wsroute run`` ingest
daemons on one upstream, one of them SIGKILLed mid-stream, one copy of every
frame stored. The server is tests/redis_helpers.py's (loopback, its own port
and folder); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wsroute import ConfigError, Message
from wsroute.plugins.redis.batcher import Batcher
from wsroute.plugins.redis.dedupe import DedupeError, dedupe_key, upstream_seq
from wsroute.plugins.redis.entry import encode_entry, pack_entry, unpack_entry
from wsroute.plugins.redis.shards import shard_of
from wsroute.plugins.redis.sink import RedisHandler
from wsroute.plugins.redis.source import RedisStreamSource
from wsroute.testing import build_handler, free_port, message, wait_until

from collectors import Collect
from conftest import running
from redis_helpers import RedisServer, redis_server, requires_redis

pytestmark = pytest.mark.anyio

WSROUTE = str(Path(sys.executable).with_name("wsroute"))


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()


def tick(n: int, *, key: str = "tick", connection: str = "up", seq: int | None = None) -> Message:
    """A JSON text frame as a connection decodes it: ``{"type": key, "n": n}``."""
    body = {"type": key, "n": n}
    return message(body, key=key, raw=json.dumps(body), connection=connection, seq=seq or n)


async def sink(options: dict[str, Any]) -> RedisHandler:
    handler = build_handler("redis", options)
    assert isinstance(handler, RedisHandler)
    await handler.start()
    return handler


async def handle_all(handler: RedisHandler, messages: list[Message]) -> None:
    """Call ``handle`` concurrently for every message, started in order (as workers take them)."""
    async with anyio.create_task_group() as tg:
        for msg in messages:
            tg.start_soon(handler.handle, msg)


def numbers(entries: list[Any]) -> list[int]:
    return [json.loads(fields[b"frame"])["n"] for _, fields in entries]


# -- pure parts: no server -----------------------------------------------------


def test_shard_of_is_crc32_of_the_key_json() -> None:
    assert shard_of('"tick"', 4) == zlib.crc32(b'"tick"') % 4
    assert shard_of("1", 1) == 0
    assert {shard_of(json.dumps(f"k{n}"), 3) for n in range(30)} == {0, 1, 2}


def test_sharded_streams_need_a_template_in_the_hash_tag() -> None:
    handler = build_handler("redis", {"stream": "{ticks.%d}:in", "shards": 3})
    assert handler.streams == ["{ticks.0}:in", "{ticks.1}:in", "{ticks.2}:in"]
    for options, wanted in [
        ({"stream": "{ticks}:in", "shards": 3}, "needs a stream template"),
        ({"stream": "{ticks}:in.%d", "shards": 3}, "inside its {hash tag}"),
        ({"stream": "{t.%d}:%d", "shards": 3}, "2 %d placeholders"),
        ({"channel": "c", "shards": 2, "pack": 2}, "pack, shards: for stream"),
        ({"stream": "s", "pack": 0}, "pack: must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=wanted):
            build_handler("redis", options)


def test_dedupe_options_are_checked() -> None:
    for options, wanted in [
        ({"dedupe": "seq"}, "needs dedupe_field"),
        ({"dedupe": "seq", "dedupe_field": "n", "min_age": "1h"}, "min_age: cannot trim"),
        ({"dedupe": "hash", "pack": 4}, "dedupe: needs pack = 1"),
        ({"dedupe_field": "n"}, 'dedupe_field: is for dedupe = "seq"'),
        ({"dedupe": "hash", "stream": "a{}b"}, "non-empty {hash tag}"),
        ({"dedupe": "maybe"}, "handlers.test.dedupe"),
    ]:
        with pytest.raises(ConfigError, match=wanted):
            build_handler("redis", {"stream": "s", **options})


def test_the_dedupe_key_is_the_content_in_the_stream_slot() -> None:
    first = encode_entry(tick(1, seq=10))
    again = encode_entry(tick(1, seq=99))  # the other daemon: its own seq and time
    other = encode_entry(tick(2))
    for stream in ("{ticks}:in", "ticks", "{ticks.3}:in", "in:{a.b}"):
        key = dedupe_key(stream, first)
        assert key_slot(key.encode()) == key_slot(stream.encode())
        assert dedupe_key(stream, again) == key
        assert dedupe_key(stream, other) != key
    assert dedupe_key("{t}:a", first) != dedupe_key("{t}:b", first)
    assert dedupe_key("s", first) != dedupe_key("s", encode_entry(tick(1, connection="up2")))


def test_upstream_seq_comes_from_a_header_field_or_the_body() -> None:
    assert upstream_seq(message({"n": 5}, fields={"seq": 7}), "seq") == 7
    assert upstream_seq(message({"meta": {"seq": "12"}}), "meta.seq") == 12
    assert upstream_seq(message({"n": 5}), "n") == 5
    for body in ({"x": 1}, {"n": 0}, {"n": -3}, {"n": True}, {"n": "7a"}, [1], None):
        with pytest.raises(ValueError, match="dedupe_field 'n'"):
            upstream_seq(message(body), "n")


def test_a_pack_unpacks_into_its_frames_fields() -> None:
    frames = [encode_entry(tick(n)) for n in (1, 2)]
    frames.append(encode_entry(message(None, raw=b"\x00\xff", seq=3)))
    entry = pack_entry(frames)
    assert (entry["kind"], entry["count"]) == ("pack", "3")
    as_stored = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in entry.items()}
    unpacked = unpack_entry(as_stored)
    assert unpacked[0][b"kind"] == b"text"
    assert unpacked[2] == {
        b"frame": b"\x00\xff",
        b"connection": b"test",
        b"key": b"null",
        b"seq": b"3",
        b"received_at": str(frames[2]["received_at"]).encode(),
    }
    for bad in ({b"kind": b"pack"}, {b"frames": b"\x90"}, {b"frames": b"not msgpack"}):
        with pytest.raises(ValueError, match=r"."):
            unpack_entry(bad)


async def test_a_round_trip_carries_at_most_batch_items_in_order() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        await anyio.sleep(0.01)
        return [n * 2 for n in items]

    batcher = Batcher(flush, max_items=10)
    results: dict[int, int] = {}

    async def submit(n: int) -> None:
        results[n] = await batcher.submit(n)

    async with anyio.create_task_group() as tg:
        for n in range(25):
            tg.start_soon(submit, n)
    assert all(len(b) <= 10 for b in batches)
    assert [n for b in batches for n in b] == list(range(25))
    assert results == {n: n * 2 for n in range(25)}


# -- against a real server -----------------------------------------------------


@requires_redis
async def test_concurrent_calls_share_round_trips(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "s", "max_len": 0})
    try:
        await handle_all(handler, [tick(n) for n in range(1, 101)])
    finally:
        await handler.stop()
    stats = await client.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 100
    assert handler.round_trips < 100  # calls that waited rode on one pipeline together
    assert numbers(await client.xrange("s")) == list(range(1, 101))
    assert (handler.stats.entries, handler.stats.frames) == (100, 100)


@requires_redis
async def test_handle_batch_is_one_round_trip_in_order(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "s", "max_len": 0})
    try:
        assert await handler.handle_batch([tick(n) for n in range(1, 51)]) is None
        assert await handler.handle_batch([tick(n) for n in range(51, 61)]) is None
    finally:
        await handler.stop()
    stats = await client.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 60
    assert handler.round_trips == 2
    assert numbers(await client.xrange("s")) == list(range(1, 61))


@requires_redis
async def test_handle_batch_packs_the_frames_of_its_call(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "s", "max_len": 0, "pack": 4})
    try:
        assert await handler.handle_batch([tick(n) for n in range(1, 11)]) is None
        assert await handler.handle_batch([tick(11)]) is None
    finally:
        await handler.stop()
    entries = await client.xrange("s")
    # 10 frames: packs of 4, 4 and 2; the next call's frame is an entry of its own.
    assert [f.get(b"count", b"1") for _, f in entries] == [b"4", b"4", b"2", b"1"]
    frames = [frame for _, fields in entries[:3] for frame in unpack_entry(fields)]
    assert [json.loads(f[b"frame"])["n"] for f in frames] == list(range(1, 11))
    assert (handler.stats.entries, handler.stats.frames, handler.round_trips) == (4, 11, 2)


@requires_redis
async def test_handle_batch_reports_a_refused_message_alone(
    server: RedisServer, client: aioredis.Redis
) -> None:
    # dedupe = "seq": a frame without the sequence field, and one below the stream's
    # top, fail alone; the rest of the call is stored.
    handler = await sink(
        {"url": server.url, "stream": "s", "dedupe": "seq", "dedupe_field": "n", "max_len": 0}
    )
    try:
        assert await handler.handle_batch([tick(5)]) is None
        no_field = message({"type": "tick"}, key="tick", raw='{"type": "tick"}', seq=1)
        failures = await handler.handle_batch([tick(6), no_field, tick(3), tick(7)])
    finally:
        await handler.stop()
    assert failures is not None
    assert sorted(failures) == [1, 2]
    assert isinstance(failures[1], ValueError)
    assert isinstance(failures[2], DedupeError)
    assert numbers(await client.xrange("s")) == [5, 6, 7]


@requires_redis
async def test_a_lost_round_trip_fails_the_whole_call(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        handler = await sink({"url": server.url, "stream": "s", "socket_timeout": "1s"})
    try:
        with pytest.raises(Exception, match=r"."):
            await handler.handle_batch([tick(1), tick(2)])
    finally:
        await handler.stop()


@requires_redis
async def test_the_batch_key_feeds_handle_batch_in_a_real_daemon(
    server: RedisServer, client: aioredis.Redis
) -> None:
    # The daemon in-process: batch = { max = 8 } on the sink, 40 frames from a real
    # upstream; every frame is stored once and in order, in round trips of 8 at most.
    async def feed(ws: ServerConnection) -> None:
        for n in range(1, 41):
            await ws.send(json.dumps({"type": "tick", "n": n}))
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    port = free_port()
    config = f"""
[connections.up]
url = "ws://127.0.0.1:{port}/"

[routes.all]
handlers = ["store"]

[handlers.store]
plugin = "redis"
url = "{server.url}"
stream = "s"
batch = {{ max = 8, wait = "50ms" }}
pack = 4
"""

    async def stored() -> list[dict[bytes, bytes]]:
        entries = await client.xrange("s")
        return [
            frame
            for _, fields in entries
            for frame in (unpack_entry(fields) if fields.get(b"kind") == b"pack" else [fields])
        ]

    async with serve(feed, "127.0.0.1", port), running(config):
        with anyio.fail_after(20):
            while len(await stored()) < 40:
                await anyio.sleep(0.02)
    assert [json.loads(f[b"frame"])["n"] for f in await stored()] == list(range(1, 41))
    counts = [int(fields.get(b"count", b"1")) for _, fields in await client.xrange("s")]
    assert max(counts) <= 4
    assert len(counts) >= 10  # packs of 4 at most, cut by calls of 8 at most


def test_the_old_batch_option_says_what_to_write(tmp_path: Path) -> None:
    config = tmp_path / "old.toml"
    config.write_text('[handlers.store]\nplugin = "redis"\nstream = "s"\nbatch = 64\n')
    result = subprocess.run(
        [WSROUTE, "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78
    assert "handlers.store.batch:" in result.stderr
    assert "batch = { max = 64" in result.stderr
    assert "(line 4)" in result.stderr


@requires_redis
async def test_min_age_drops_entries_older_than_it(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "aged", "min_age": "1s", "max_len": 0})
    try:
        for n in range(1, 301):
            await handler.handle(tick(n))
        assert await client.xlen("aged") == 300
        await anyio.sleep(1.2)
        await handler.handle(tick(301))  # MINID ~ now - 1s: whole nodes of old entries go
    finally:
        await handler.stop()
    left = await client.xrange("aged")
    assert 1 <= len(left) < 301
    assert numbers(left)[-1] == 301

    # With max_len too, XADD trims by age and an XTRIM per round trip caps the length.
    capped = await sink({"url": server.url, "stream": "capped", "min_age": "1h", "max_len": 10})
    try:
        for n in range(1, 501):
            await capped.handle(tick(n))
    finally:
        await capped.stop()
    assert 10 <= await client.xlen("capped") < 500


@requires_redis
async def test_shards_keep_each_key_in_one_stream_in_order(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "{t.%d}:in", "shards": 3})
    keys = [f"k{n}" for n in range(8)]
    sent = [tick(n, key=keys[n % 8]) for n in range(1, 201)]
    try:
        await handle_all(handler, sent)
    finally:
        await handler.stop()
    seen: dict[str, list[int]] = {}
    for shard, stream in enumerate(handler.streams):
        for _, fields in await client.xrange(stream):
            key = json.loads(fields[b"key"])
            assert shard_of(fields[b"key"].decode(), 3) == shard
            seen.setdefault(key, []).append(json.loads(fields[b"frame"])["n"])
    assert sum(len(v) for v in seen.values()) == 200
    for key, got in seen.items():
        assert got == [m.body["n"] for m in sent if m.key == key]  # in order, all of them
    assert len({shard_of(json.dumps(k), 3) for k in keys}) > 1


WORKER = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[sources.ticks]
type = "redis-stream"
url = "{url}"
stream = "{stream}"
consumer = "w1"
codec = "json"
read = {{ count = 10, block = "100ms" }}

[routes.ticks]
handlers = ["work"]

[handlers.work]
plugin = "collectors:Collect"
{work}

[handlers.dlq]
plugin = "collectors:Collect"
"""


def source_of(service: Any) -> RedisStreamSource:
    instance = service.sources["ticks"].instance
    assert isinstance(instance, RedisStreamSource)
    return instance


@requires_redis
async def test_packed_entries_reach_a_worker_frame_by_frame(
    server: RedisServer, client: aioredis.Redis
) -> None:
    handler = await sink({"url": server.url, "stream": "{p}:in", "pack": 4})
    try:
        await handle_all(handler, [tick(n) for n in range(1, 41)])
    finally:
        await handler.stop()
    entries = await client.xrange("{p}:in")
    assert len(entries) < 40
    assert {fields[b"kind"] for _, fields in entries} <= {b"pack", b"text"}
    assert max(int(fields.get(b"count", b"1")) for _, fields in entries) <= 4
    assert handler.stats.frames == 40
    async with running(WORKER.format(url=server.url, stream="{p}:in", work="")) as service:
        await wait_until(lambda: len(Collect.seen["work"]) == 40)
        await wait_until(lambda: source_of(service).stats.acked == len(entries))
        assert (await client.xpending("{p}:in", "wsroute"))["pending"] == 0
    seen = Collect.seen["work"]
    assert [m.body["n"] for m in seen] == list(range(1, 41))
    assert [m.seq for m in seen] == list(range(1, 41))
    first = seen[0]
    assert (first.connection, first.key) == ("ticks", "tick")
    assert first.fields["source_connection"] == "up"
    ids = [entry_id.decode() for entry_id, _ in entries]
    positions = [ids.index(m.fields["stream_id"]) for m in seen]
    assert positions == sorted(positions)  # entry by entry, in stream order
    packed = [m.fields["pack_index"] for m in seen if "pack_index" in m.fields]
    assert packed
    assert set(packed) <= {0, 1, 2, 3}


@requires_redis
async def test_a_packed_entry_is_acknowledged_once_all_its_frames_settled(
    server: RedisServer, client: aioredis.Redis
) -> None:
    frames = [encode_entry(tick(n)) for n in (1, 2, 3)]
    bad = encode_entry(message(None, raw="not json", seq=4))
    await client.xadd("{q}:in", dict(pack_entry([*frames, bad])))
    slow = 'delay = "300ms"\nconcurrency = 1'
    async with running(WORKER.format(url=server.url, stream="{q}:in", work=slow)) as service:
        await wait_until(lambda: len(Collect.seen["work"]) == 1)
        # One frame done, two still in the handler: the entry stays pending.
        assert (await client.xpending("{q}:in", "wsroute"))["pending"] == 1
        await wait_until(lambda: len(Collect.seen["work"]) == 3)
        await wait_until(lambda: source_of(service).stats.acked == 1)
        assert (await client.xpending("{q}:in", "wsroute"))["pending"] == 0
        stats = source_of(service).stats
    assert [m.fields["pack_index"] for m in Collect.seen["work"]] == [0, 1, 2]
    (letter,) = Collect.seen["dlq"]
    assert letter.dead_letter is not None
    assert letter.dead_letter.reason == "decode_error"
    assert (letter.fields["pack_index"], letter.raw) == (3, b"not json")
    assert (stats.read, stats.delivered, stats.dead_lettered, stats.acked) == (1, 3, 1, 1)


@requires_redis
async def test_redelivered_packs_are_handled_frame_by_frame_and_a_poison_pack_dead_lettered(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """A worker's restart takes its pending packs one at a time (not the batch path of a
    fresh read): each frame is routed, an undecodable one dead-lettered alone, and a
    pack delivered more than ``max_deliveries`` times dead-lettered frame by frame."""
    stream = "{r}:in"
    await client.xgroup_create(stream, "wsroute", id="0", mkstream=True)
    bad = encode_entry(message(None, raw="not json", seq=4))
    good_id = await client.xadd(
        stream, dict(pack_entry([*(encode_entry(tick(n)) for n in (1, 2, 3)), bad]))
    )
    poison_id = await client.xadd(
        stream, dict(pack_entry([encode_entry(tick(n)) for n in (10, 11)]))
    )
    # Both delivered to this worker before (it "died" holding them); the poison one
    # four times more.
    await client.xreadgroup("wsroute", "w1", {stream: ">"})
    for _ in range(4):
        await client.xclaim(stream, "wsroute", "w1", 0, [poison_id])
    text = WORKER.format(url=server.url, stream=stream, work="")
    text = text.replace('consumer = "w1"', 'consumer = "w1"\nmax_deliveries = 3')
    async with running(text) as service:
        await wait_until(lambda: len(Collect.seen["dlq"]) == 3)
        await wait_until(lambda: source_of(service).stats.acked == 2)
        assert (await client.xpending(stream, "wsroute"))["pending"] == 0
    assert [m.body["n"] for m in Collect.seen["work"]] == [1, 2, 3]
    assert [m.fields["pack_index"] for m in Collect.seen["work"]] == [0, 1, 2]
    assert {m.fields["stream_id"] for m in Collect.seen["work"]} == {good_id.decode()}
    letters = Collect.seen["dlq"]
    reasons = sorted(
        (m.dead_letter.reason, m.fields["pack_index"]) for m in letters if m.dead_letter
    )
    assert reasons == [("decode_error", 3), ("max_deliveries", 0), ("max_deliveries", 1)]
    poisoned = [m for m in letters if m.dead_letter and m.dead_letter.reason == "max_deliveries"]
    assert {m.fields["stream_id"] for m in poisoned} == {poison_id.decode()}
    assert all(m.fields["delivery_count"] > 3 for m in poisoned)


@requires_redis
async def test_seq_dedupe_stores_each_sequence_number_once(
    server: RedisServer, client: aioredis.Redis
) -> None:
    options = {"url": server.url, "stream": "{ha}:in", "dedupe": "seq", "dedupe_field": "n"}
    first, second = await sink(options), await sink(options)
    try:
        # Two daemons on one upstream: the same n, their own connection name and seq.
        await handle_all(first, [tick(n, connection="a", seq=n + 100) for n in range(1, 31)])
        await handle_all(second, [tick(n, connection="b") for n in range(1, 41)])
        entries = await client.xrange("{ha}:in")
        assert [entry_id for entry_id, _ in entries] == [f"0-{n}".encode() for n in range(1, 41)]
        assert {fields[b"connection"] for _, fields in entries[:30]} == {b"a"}
        assert second.stats.duplicates == 30
        assert (second.stats.entries, first.stats.entries) == (10, 30)

        # One round trip is written in sequence order: a retried frame rejoins in its place.
        await handle_all(second, [tick(n) for n in (43, 41, 42)])
        latest = (await client.xrevrange("{ha}:in", count=3))[::-1]
        assert [entry_id for entry_id, _ in latest] == [b"0-41", b"0-42", b"0-43"]
        assert numbers(latest) == [41, 42, 43]
        assert second.stats.late == 0

        # A frame below the top that is not stored cannot be put in its place: loud.
        await client.xdel("{ha}:in", "0-5")
        with pytest.raises(DedupeError, match="seq 5 came after seq 43"):
            await second.handle(tick(5))
        with pytest.raises(ValueError, match="dedupe_field 'n'"):
            await second.handle(message({"no": "n"}, raw="{}"))
        # A stream written without dedupe (time-based IDs) is refused, not silently skipped.
        await client.xadd("{ha}:other", {"frame": b"x"})
        foreign = await sink({**options, "stream": "{ha}:other"})
        try:
            with pytest.raises(DedupeError, match="time-based IDs"):
                await foreign.handle(tick(7))
        finally:
            await foreign.stop()
    finally:
        await first.stop()
        await second.stop()


@requires_redis
async def test_hash_dedupe_stores_one_copy_within_the_window(
    server: RedisServer, client: aioredis.Redis
) -> None:
    options = {
        "url": server.url,
        "stream": "{h}:in",
        "dedupe": "hash",
        "dedupe_window": "500ms",
        "min_age": "1h",  # the script trims by MINID too
    }
    first, second = await sink(options), await sink(options)
    try:
        await handle_all(first, [tick(n, seq=n + 7) for n in range(1, 21)])
        await handle_all(second, [tick(n) for n in range(1, 26)])
        assert numbers(await client.xrange("{h}:in")) == list(range(1, 26))
        assert (second.stats.duplicates, second.stats.entries) == (20, 5)
        key = dedupe_key("{h}:in", encode_entry(tick(1)))
        assert 0 < await client.pttl(key) <= 500

        await client.script_flush()  # a Redis restart forgets scripts: loaded again
        await second.handle(tick(1))
        assert second.stats.duplicates == 21
        await anyio.sleep(0.6)  # past the window, the same content is new again
        await second.handle(tick(1))
        assert numbers(await client.xrange("{h}:in"))[-1] == 1
        assert await client.xlen("{h}:in") == 26
    finally:
        await first.stop()
        await second.stop()


# -- HA pairs: two real ingest daemons, one killed mid-stream --------------------


class Broadcast:
    """A WebSocket upstream sending the same numbered frames to every client, at a steady rate."""

    def __init__(self, count: int, interval: float, clients: int) -> None:
        self.count = count
        self.interval = interval
        self.clients_wanted = clients
        self.clients: set[ServerConnection] = set()
        self.sent = 0

    async def _session(self, ws: ServerConnection) -> None:
        self.clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)

    async def run(self, port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with serve(self._session, "127.0.0.1", port):
            task_status.started()
            with anyio.fail_after(30):
                while len(self.clients) < self.clients_wanted:
                    await anyio.sleep(0.02)
            for n in range(1, self.count + 1):
                frame = json.dumps({"type": "tick", "n": n})
                for ws in list(self.clients):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(frame)
                self.sent = n
                await anyio.sleep(self.interval)


INGEST = """
[daemon]
log_format = "json"
shutdown_timeout = "3s"

[connections.up]
url = "ws://127.0.0.1:{port}/"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["store"]

[handlers.store]
plugin = "redis"
url = "{url}"
stream = "{{ticks}}:in"
concurrency = 8
{dedupe}
"""


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``wsroute run -c config`` with stdout and stderr into ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([WSROUTE, "run", "-c", str(config)], stdout=out, stderr=out)


def sink_totals(log: Path) -> dict[str, Any]:
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"sink_totals"' in line:
            event: dict[str, Any] = json.loads(line)
            return event
    raise AssertionError(f"no sink_totals in {log}:\n{log.read_text()[-2000:]}")


@requires_redis
@pytest.mark.slow
@pytest.mark.parametrize(
    "dedupe",
    ['dedupe = "seq"\ndedupe_field = "n"', 'dedupe = "hash"\ndedupe_window = "30s"'],
    ids=["seq", "hash"],
)
async def test_an_ha_pair_stores_every_frame_once_when_one_daemon_dies(
    tmp_path: Path, server: RedisServer, client: aioredis.Redis, dedupe: str
) -> None:
    count = 400
    port = free_port()
    upstream = Broadcast(count, interval=0.003, clients=2)
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "ingest-a.log", tmp_path / "ingest-b.log"]
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(upstream.run, port)
            for name, log in zip("ab", logs, strict=True):
                config = tmp_path / f"ingest-{name}.toml"
                config.write_text(INGEST.format(port=port, url=server.url, dedupe=dedupe))
                procs.append(start_daemon(config, log))
            victim, survivor = procs
            await wait_until(lambda: upstream.sent >= count // 2, timeout=30)
            stored_at_kill = await client.xlen("{ticks}:in")
            victim.send_signal(signal.SIGKILL)
        # The upstream sent everything; the survivor stores what it still holds.
        deadline = time.monotonic() + 10
        while await client.xlen("{ticks}:in") < count and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # a duplicate would show up now
        entries = await client.xrange("{ticks}:in")
        survivor.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: survivor.wait(timeout=15)) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    assert 0 < stored_at_kill < count  # killed mid-stream, while both were storing
    assert len(entries) == count
    assert sorted(numbers(entries)) == list(range(1, count + 1))  # all once, no duplicates
    totals = sink_totals(logs[1])
    assert totals["entries"] + totals["duplicates"] == count  # it saw every frame
    assert totals["late"] == 0
