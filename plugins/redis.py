"""The built-in ``redis`` handler: ``XADD`` to a stream, or ``PUBLISH`` to a channel.

Needs the ``redis`` extra (``pip install 'wsroute[redis]'``: redis-py's asyncio
client).

**Stream entries** (``stream = "{ticks}:in"``) are what a ``redis-stream``
source of a worker daemon reads back (DESIGN.md, "Scale-out"):

- ``frame``: the raw frame, byte for byte; a text frame as its UTF-8 bytes,
  with ``kind = "text"``; a binary frame has no ``kind``;
- ``connection``, ``key`` (JSON), ``seq`` (decimal), ``received_at`` (Unix
  seconds, decimal);
- a message that has no raw frame — a ``$connected``/``$disconnected``
  lifecycle message, one a handler emitted, one replayed from a ``jsonl`` file
  (or an empty binary frame) — has ``kind = "message"`` and its whole ``jsonl``
  record (body, fields...) as JSON in ``frame``, so a worker rebuilds it with
  :func:`wsroute.plugins.jsonl.parse_record` instead of a codec;
- a dead-lettered message adds ``reason``, ``handler``, ``error`` and
  ``attempts``.

Each ``XADD`` trims the stream to about ``max_len`` entries (``MAXLEN ~``).

**Channel messages** (``channel = "ticks"``) are the message's ``jsonl`` record
as JSON. Pub/sub keeps nothing: a message no subscriber was listening for is
gone, though it counts as handled.

``handle()`` returns once Redis answered the command. Under load the workers'
concurrent calls (``concurrency = N``) share one pipeline round trip: whoever
gets to send takes every entry waiting, so up to N entries travel together,
in the order the workers took them. With ``concurrency = 1`` entries are written
strictly in order, one round trip each. Delivery is at least once: a batch cut
off by a lost connection fails every message in it, and some of them may
already be in the stream when the daemon retries them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from wsroute import Duration, HandlerContext, Message
from wsroute.connection import redact_url
from wsroute.plugins._sinks import entry_fields
from wsroute.plugins.jsonl import encode_record

__all__ = ["PipelineError", "RedisHandler", "stream_fields"]


def stream_fields(message: Message) -> dict[str, str | bytes]:
    """The stream entry written for ``message`` (see the module documentation)."""
    return entry_fields(message)


class PipelineError(RuntimeError):
    """The pipeline round trip a message was part of failed (another message's call saw why)."""


class _Slot:
    __slots__ = ("done", "error", "item", "result", "sent")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.sent = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class Batcher:
    """Collects concurrent :meth:`submit` calls into one ``flush`` of everything waiting.

    One flush runs at a time. A caller that finds none running sends every item
    queued so far (its own included); the others wait for the lock and find
    their item already done. ``flush(items)`` returns one result per item,
    an ``Exception`` instance for an item that failed on its own.
    """

    def __init__(self, flush: Callable[[list[Any]], Awaitable[Sequence[Any]]]) -> None:
        self._flush = flush
        self._lock = anyio.Lock()
        self._queue: list[_Slot] = []
        self.flushes = 0

    async def submit(self, item: Any) -> Any:
        """Send ``item`` with whatever else is waiting; its result, or raise its error."""
        slot = _Slot(item)
        self._queue.append(slot)
        try:
            async with self._lock:
                if not slot.done:
                    await self._send()
        except BaseException:
            if not slot.sent:  # cancelled while waiting: do not send it behind our back
                self._queue.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def _send(self) -> None:
        batch, self._queue = self._queue, []
        self.flushes += 1
        for slot in batch:
            slot.sent = True
        try:
            results = await self._flush([slot.item for slot in batch])
        except BaseException as exc:
            for slot in batch:
                slot.done = True
                failure = PipelineError(f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                slot.error = failure
            raise
        for slot, result in zip(batch, results, strict=True):
            slot.done = True
            if isinstance(result, Exception):
                slot.error = result
            else:
                slot.result = result


class RedisHandler:
    """Write each message to Redis: XADD to a stream (trimmed, MAXLEN ~) or PUBLISH.

    Stream entries carry the raw frame and ``connection``, ``key``, ``seq``,
    ``received_at``, for worker daemons to consume; a channel gets the JSON
    record. Concurrent workers share pipelined round trips.
    """

    @dataclass
    class Options:
        url: str = field(
            default="redis://127.0.0.1:6379/0",
            metadata={
                "doc": "redis://[user:password@]host:port/db, rediss:// for TLS, or "
                "unix:///path/to/socket (credentials never logged)."
            },
        )
        stream: str | None = field(
            default=None, metadata={"doc": "XADD each message to this stream (or set channel)."}
        )
        channel: str | None = field(
            default=None, metadata={"doc": "PUBLISH each message's JSON record to this channel."}
        )
        max_len: int = field(
            default=1_000_000,
            metadata={"doc": "Trim the stream to about this many entries (MAXLEN ~); 0: never."},
        )
        socket_timeout: Duration = field(
            default=Duration(5.0),
            metadata={"doc": "Socket timeout of connecting and of each round trip."},
        )
        # Reserved for the scale-out work, not built yet: min_age (trim by age,
        # MINID), pack (several frames per entry) and shard (several streams).

        def __post_init__(self) -> None:
            if (self.stream is None) == (self.channel is None):
                raise ValueError("set exactly one of stream (XADD) and channel (PUBLISH)")
            if self.stream == "" or self.channel == "":
                raise ValueError("stream and channel must not be empty")
            scheme = urlsplit(self.url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                shown = redact_url(self.url)
                raise ValueError(f"url must be redis://, rediss:// or unix://, got {shown!r}")
            if self.max_len < 0:
                raise ValueError(f"max_len must not be negative, got {self.max_len}")
            if self.socket_timeout <= 0:
                raise ValueError("socket_timeout must be above 0")

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._url_for_logs = redact_url(options.url)
        self._client: aioredis.Redis | None = None
        self._batcher = Batcher(self._flush)

    @property
    def batches(self) -> int:
        """Round trips made so far (each carries one or more messages)."""
        return self._batcher.flushes

    async def start(self) -> None:
        """Create the client and check the server; a server that is down is only logged."""
        options = self.options
        # One immediate retry on a fresh connection covers a pooled connection that
        # died with a server restart; anything longer is the daemon's retries' job.
        self._client = aioredis.Redis.from_url(
            options.url,
            socket_timeout=options.socket_timeout,
            socket_connect_timeout=options.socket_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        try:
            with anyio.fail_after(options.socket_timeout):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._ctx.log.warning(
                "redis_unavailable", url=self._url_for_logs, error=f"{type(exc).__name__}: {exc}"
            )

    async def stop(self) -> None:
        """Close the client's connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def handle(self, message: Message) -> None:
        """XADD or PUBLISH the message; return once Redis answered."""
        if self.options.stream is not None:
            await self._batcher.submit(stream_fields(message))
        else:
            await self._batcher.submit(encode_record(message)[:-1])

    async def _flush(self, items: list[Any]) -> list[Any]:
        client = self._client
        if client is None:
            raise RuntimeError("the redis handler is not started")
        options = self.options
        pipe = client.pipeline(transaction=False)
        if options.stream is not None:
            for entry in items:
                pipe.xadd(options.stream, entry, maxlen=options.max_len or None, approximate=True)
        else:
            assert options.channel is not None
            for payload in items:
                pipe.publish(options.channel, payload)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
