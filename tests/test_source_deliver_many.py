"""``SourceContext.deliver_many``: a batch routed in one call, each message settled on its own.

Against a real daemon in-process (the ``BatchSource`` below, loaded as a plugin
like ``collectors:ListSource``), and through a real ``redis-server`` for the
``redis-stream`` source, which delivers each ``XREADGROUP`` reply with one call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import anyio
import pytest
import redis.asyncio as aioredis

from wsroute import Frame, Message, SourceContext
from wsroute.plugins.redis.entry import encode_entry_bytes, pack_entry_bytes
from wsroute.plugins.redis.source import RedisStreamSource
from wsroute.testing import wait_until

from collectors import Collect
from conftest import running
from redis_helpers import RedisServer, requires_redis

pytestmark = pytest.mark.anyio


class BatchSource:
    """Deliver ``count`` JSON frames (``n`` = 1, 2, ...) with ``ctx.deliver_many``,
    ``batch`` per call; record what settled and check, as each settles, that every
    handler named in ``expect`` is done with it."""

    settled: list[int] = []  # n of each settled message, in settling order
    indices: list[tuple[int, int]] = []  # (call, index) passed to on_settled
    early: list[int] = []  # n settled before a handler of `expect` was done with it
    returned: list[tuple[int, int]] = []  # (call, messages handled by "slow" at its return)
    expect: tuple[str, ...] = ()

    @dataclass
    class Options:
        count: int = 20
        batch: int = 5
        other_every: int = 0  # every Nth message has type "other" (matches no route)

    def __init__(self, options: Options, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    async def run(self) -> None:
        options = self.options
        numbers = list(range(1, options.count + 1))
        for call, start in enumerate(range(0, len(numbers), options.batch)):
            chunk = numbers[start : start + options.batch]
            messages = [self._message(n) for n in chunk]

            def on_settled(index: int, chunk: list[int] = chunk, call: int = call) -> None:
                n = chunk[index]
                BatchSource.indices.append((call, index))
                BatchSource.settled.append(n)
                unmatched = options.other_every and n % options.other_every == 0
                if not unmatched and any(
                    n not in {m.seq for m in Collect.seen[name]} for name in BatchSource.expect
                ):
                    BatchSource.early.append(n)

            await self.ctx.deliver_many(messages, on_settled)
            BatchSource.returned.append((call, len(Collect.seen["slow"])))
        await anyio.sleep_forever()

    def _message(self, n: int) -> Message:
        other = self.options.other_every and n % self.options.other_every == 0
        body = {"type": "other" if other else "tick", "n": n}
        return self.ctx.decode(Frame(self.ctx.name, json.dumps(body), n, time.time()))

    @classmethod
    def reset(cls) -> None:
        cls.settled.clear()
        cls.indices.clear()
        cls.early.clear()
        cls.returned.clear()
        cls.expect = ()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()
    BatchSource.reset()


CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "{shutdown}"

[sources.ticks]
type = "test_source_deliver_many:BatchSource"
count = {count}
batch = {batch}
{extra}

[routes.ticks]
connection = "ticks"
key = "tick"
handlers = [{handlers}]

[handlers.fast]
plugin = "collectors:Collect"
[handlers.slow]
plugin = "collectors:Collect"
delay = "{delay}"
{slow}
[handlers.broken]
plugin = "collectors:Collect"
fail_always = true
retries = 1
[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(
    *,
    count: int = 20,
    batch: int = 5,
    handlers: str = '"fast"',
    extra: str = "",
    delay: str = "0s",
    slow: str = "",
    shutdown: str = "2s",
) -> str:
    return CONFIG.format(
        count=count,
        batch=batch,
        handlers=handlers,
        extra=extra,
        delay=delay,
        slow=slow,
        shutdown=shutdown,
    )


def seqs(name: str) -> list[int]:
    return [m.seq for m in Collect.seen[name]]


async def test_each_message_settles_once_after_every_handler_settled() -> None:
    BatchSource.expect = ("fast", "slow", "dlq")  # broken's dead letters: written first
    text = config(count=20, batch=7, handlers='"fast", "slow", "broken"', delay="5ms")
    async with running(text) as service:
        await wait_until(lambda: len(BatchSource.settled) == 20)
        ctx = service.sources["ticks"].ctx
        assert (ctx.delivered, ctx.settled, ctx.in_flight) == (20, 20, 0)
        assert service.runners["broken"].stats.dead_lettered == 20
    assert sorted(BatchSource.settled) == list(range(1, 21))  # each once
    assert sorted(BatchSource.indices) == [
        (c, i) for c, n in ((0, 7), (1, 7), (2, 6)) for i in range(n)
    ]
    assert BatchSource.early == []
    assert sorted(seqs("fast")) == sorted(seqs("slow")) == list(range(1, 21))
    assert [m.connection for m in Collect.seen["fast"][:1]] == ["ticks"]


async def test_a_message_no_route_matches_settles_at_once() -> None:
    async with running(config(count=12, batch=12, extra="other_every = 3")) as service:
        await wait_until(lambda: len(BatchSource.settled) == 12)
        ctx = service.sources["ticks"].ctx
        assert (ctx.delivered, ctx.settled) == (12, 12)
    assert sorted(seqs("fast")) == [n for n in range(1, 13) if n % 3]


async def test_a_full_block_queue_holds_the_call_back() -> None:
    # Queue of 2, one worker at 30 ms a message: the call returns only once all but
    # the last few messages of its batch were handled.
    slow = 'queue = 2\noverflow = "block"\nconcurrency = 1'
    text = config(count=12, batch=12, handlers='"slow"', delay="30ms", slow=slow)
    started = time.monotonic()
    async with running(text):
        await wait_until(lambda: len(BatchSource.returned) == 1)
        took = time.monotonic() - started
        await wait_until(lambda: len(BatchSource.settled) == 12)
    ((_, handled_at_return),) = BatchSource.returned
    assert handled_at_return >= 12 - 2 - 1  # at most the queue and the worker's one left
    assert took >= 0.03 * (12 - 2 - 1)
    assert sorted(BatchSource.settled) == list(range(1, 13))


async def test_shutdown_releases_what_did_not_settle() -> None:
    text = config(count=30, batch=10, handlers='"slow"', delay="100ms", shutdown="300ms")
    async with running(text) as service:
        await wait_until(lambda: len(BatchSource.returned) == 3)
        slow = service.runners["slow"]
        ctx = service.sources["ticks"].ctx
    handled = seqs("slow")
    assert 0 < len(handled) < 30
    assert slow.stats.released == 30 - len(handled)
    assert slow.stats.dead_lettered == 0  # left for the upstream to deliver again
    assert slow.balanced()
    assert sorted(BatchSource.settled) == sorted(handled)  # never the released ones
    assert ctx.in_flight == 30 - len(handled)
    assert not Collect.seen["dlq"]


async def test_a_call_cancelled_while_it_waits_routes_nothing_more() -> None:
    # One worker hangs on message 1, message 2 fills the queue, message 3 waits for
    # room: shutdown cancels the call there; 4..10 are never routed nor settled.
    hang = 'queue = 1\noverflow = "block"\nconcurrency = 1\nhang = true'
    text = config(count=10, batch=10, handlers='"slow"', slow=hang, shutdown="300ms")
    async with running(text) as service:
        slow = service.runners["slow"]
        await wait_until(lambda: Collect.attempts["slow"] == 1 and slow.stats.received == 2)
        await anyio.sleep(0.1)  # the call waits for room; nothing more arrives
        assert slow.stats.received == 2
        ctx = service.sources["ticks"].ctx
    assert BatchSource.returned == []  # the call never returned
    assert BatchSource.settled == []
    # Message 3 may be handed over as the runner stops, and released with the others.
    assert slow.stats.received in (2, 3)
    assert slow.stats.released == slow.stats.received
    assert ctx.delivered - ctx.settled == ctx.in_flight == 3  # 1, 2 and the one waiting


# -- the redis-stream source: one deliver_many per XREADGROUP reply ------------------

STREAM = "{batch}:in"

WORKER = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[sources.ticks]
type = "redis-stream"
url = "{url}"
stream = "{stream}"
consumer = "w1"
read = {{ count = 100, block = "100ms" }}

[routes.ticks]
connection = "ticks"
handlers = ["work"]

[handlers.work]
plugin = "collectors:Collect"
delay = "200ms"
concurrency = 1

[handlers.dlq]
plugin = "collectors:Collect"
"""


def tick(n: int, raw: str | None = None) -> dict[str, bytes]:
    frame = raw if raw is not None else json.dumps({"type": "tick", "n": n})
    return encode_entry_bytes(Message("up", "tick", None, raw=frame, seq=n, received_at=1e9 + n))


async def pending_ids(conn: aioredis.Redis) -> set[str]:
    rows = await conn.xpending_range(STREAM, "wsroute", "-", "+", 100)
    return {row["message_id"].decode() for row in rows}


@requires_redis
async def test_the_stream_source_acks_each_entry_of_a_read_once_it_settled(
    server: RedisServer, client: aioredis.Redis
) -> None:
    # One read: two plain entries, a pack with an undecodable frame, an undecodable
    # entry, a plain entry; the handler takes 200 ms a message, one at a time.
    await client.xadd(STREAM, tick(1))  # type: ignore[arg-type]
    await client.xadd(STREAM, tick(2))  # type: ignore[arg-type]
    frames = [tick(3), tick(4, raw="not json"), tick(5)]
    pack = (await client.xadd(STREAM, pack_entry_bytes(frames))).decode()  # type: ignore[arg-type]
    bad = (await client.xadd(STREAM, tick(6, raw="not json"))).decode()  # type: ignore[arg-type]
    last = (await client.xadd(STREAM, tick(7))).decode()  # type: ignore[arg-type]
    async with running(WORKER.format(url=server.url, stream=STREAM)) as service:
        await wait_until(lambda: len(Collect.seen["work"]) == 3)  # 1, 2, 3: 5 not yet
        held = await pending_ids(client)
        assert pack in held  # frame 5 has not settled: the pack stays pending
        await wait_until(lambda: len(Collect.seen["work"]) == 5)
        source = service.sources["ticks"].instance
        assert isinstance(source, RedisStreamSource)
        await wait_until(lambda: source.stats.acked == 5)
        assert await pending_ids(client) == set()
        stats = source.stats
        ctx = service.sources["ticks"].ctx
        assert ctx.delivered == ctx.settled == 5
    assert seqs("work") == [1, 2, 3, 5, 7]
    assert [m.fields.get("pack_index") for m in Collect.seen["work"]] == [None, None, 0, 2, None]
    assert Collect.seen["work"][-1].fields["stream_id"] == last
    letters = {(m.fields["stream_id"], m.fields.get("pack_index")) for m in Collect.seen["dlq"]}
    assert letters == {(pack, 1), (bad, None)}
    assert (stats.read, stats.delivered, stats.dead_lettered, stats.acked) == (5, 5, 2, 5)
