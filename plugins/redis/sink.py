"""The built-in ``redis`` handler: ``XADD`` to a stream, or ``PUBLISH`` to a channel.

Needs the ``redis`` extra (``pip install 'wsroute[redis]'``: redis-py's asyncio
client).

**Stream entries** (``stream = "{ticks}:in"``) are what a ``redis-stream``
source of a worker daemon reads back (docs/scale-out.md): one entry per frame,
or with ``pack = N`` up to N frames of one round trip and stream per entry. The
entry format is :mod:`wsroute.plugins.redis.entry`'s (:func:`encode_entry_bytes`,
:func:`pack_entry_bytes`); this module only decides where and how entries are written.

Each ``XADD`` trims the stream to about ``max_len`` entries (``MAXLEN ~``), or
with ``min_age`` drops entries older than that (``MINID ~``; ``max_len`` then
caps the length with one ``XTRIM`` per stream and round trip). ``shards = N``
spreads the entries over N streams (:mod:`.shards`); ``dedupe`` lets an HA pair
of ingest daemons store one copy of each frame (:mod:`.dedupe`).

**Channel messages** (``channel = "ticks"``) are the message's ``jsonl`` record
as JSON. Pub/sub keeps nothing: a message no subscriber was listening for is
gone, though it counts as handled.

Two ways in, the same writes:

- **``handle_batch(messages)``**, with the handler's ``batch = { max, wait }``
  delivery key: one pipelined round trip per call, ``pack`` frames per entry
  within it. Messages Redis refused (or a late frame under ``dedupe = "seq"``)
  are reported alone in the returned mapping; a round trip cut off (a lost
  connection, a timeout) fails the whole call.
- **``handle(message)``**, without ``batch``: the workers' concurrent calls
  (``concurrency = N``) share one pipeline round trip (:mod:`.batcher`): whoever
  gets to send takes up to :data:`ROUND_TRIP_MAX` waiting entries, in the order
  the workers took them. With ``concurrency = 1`` entries are written strictly
  in order, one round trip each.

Invariants:

- ``handle()`` returns, and ``handle_batch()`` reports a message handled, only
  once Redis answered the command that carries it (the entry's ID, or a
  duplicate under ``dedupe``): a frame counts as handled only once Redis has it.
- Per stream, entries keep the order of the round trip (``dedupe = "seq"``: the
  order of the upstream's sequence numbers).
- Delivery is at least once (without ``dedupe``): a round trip cut off by a lost
  connection fails every message in it, and some of them may already be in the
  stream when the daemon sends them again.
- Outage or failure (:mod:`.outage`): a lost connection, a timeout, or a reply
  like ``LOADING`` or ``READONLY`` is an outage — the message is reported as
  :class:`~wsroute.Unavailable`, and the daemon holds it and sends it again
  (the same dedupe key) once Redis is back; a reply like ``WRONGTYPE`` refused
  that message: a failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from wsroute import Duration, HandlerContext, Message
from wsroute.net import redact_url
from wsroute.records import encode_record

from .batcher import Batcher
from .dedupe import SCRIPTS, DedupeError, dedupe_key, upstream_seq
from .entry import encode_entry_bytes, pack_entry_bytes, pack_messages
from .outage import unavailable
from .roundtrip import Command, Link, round_trip
from .shards import SHARD, hash_tag, shard_of, shard_stream
from .url import check_redis_url

__all__ = ["ROUND_TRIP_MAX", "RedisHandler", "SinkStats"]

#: Entries one round trip of concurrent ``handle()`` calls carries, at most (with
#: ``handle_batch``, the handler's ``batch.max`` bounds a round trip instead).
ROUND_TRIP_MAX = 1000


@dataclass
class SinkStats:
    """The stream sink's counters; :attr:`RedisHandler.stats`, logged as ``sink_totals``."""

    entries: int = 0  # entries XADDed
    frames: int = 0  # frames in them (more than entries with pack)
    duplicates: int = 0  # frames another daemon (or an earlier attempt) had stored: skipped
    late: int = 0  # dedupe = "seq": frames refused, a higher sequence number was stored
    trim_errors: int = 0  # XTRIM (min_age with max_len) failures, logged


class _Entry:
    """One frame on its way to a stream: the shard's stream, its fields, its dedupe identity."""

    __slots__ = ("content_key", "fields", "seq", "stream")

    def __init__(self, stream: str, fields: dict[str, bytes]) -> None:
        self.stream = stream
        self.fields = fields
        self.seq = 0  # dedupe = "seq"
        self.content_key = ""  # dedupe = "hash"


class RedisHandler:
    """Write each message to Redis: XADD to a stream (trimmed, MAXLEN ~) or PUBLISH.

    Stream entries carry the raw frame and ``connection``, ``key``, ``seq``,
    ``received_at``, for worker daemons to consume; a channel gets the JSON
    record. With the handler's ``batch`` key each ``handle_batch`` call is one
    pipelined round trip; without it, concurrent ``handle`` calls share them.
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
            default=None,
            metadata={
                "doc": "XADD each message to this stream (or set channel); with shards, a "
                'template whose hash tag holds %d, e.g. "{ticks.%d}:in".'
            },
        )
        channel: str | None = field(
            default=None, metadata={"doc": "PUBLISH each message's JSON record to this channel."}
        )
        max_len: int = field(
            default=1_000_000,
            metadata={"doc": "Trim the stream to about this many entries (MAXLEN ~); 0: never."},
        )
        min_age: Duration | None = field(
            default=None,
            metadata={
                "doc": "Also drop entries older than this (MINID ~, by this host's clock); "
                "not with dedupe = seq."
            },
        )
        socket_timeout: Duration = field(
            default=Duration(2.0),
            metadata={
                "doc": "Socket timeout of connecting and of each round trip: longer is an "
                "outage (keep it below the handler's timeout, which is a failure)."
            },
        )
        pack: int = field(
            default=1,
            metadata={
                "doc": "Frames per stream entry, at most (kind = pack), among those of one "
                "round trip; 1: one frame per entry."
            },
        )
        shards: int = field(
            default=1,
            metadata={"doc": "Streams to spread the frames over, by a hash of the route key."},
        )
        dedupe: Literal["none", "seq", "hash"] = field(
            default="none",
            metadata={
                "doc": "HA pairs: store one copy of frames written by two ingest daemons, by "
                "the upstream's sequence number (seq) or by content (hash)."
            },
        )
        dedupe_field: str = field(
            default="",
            metadata={
                "doc": "dedupe = seq: the header field, or dotted path into the JSON body, "
                "holding the upstream's increasing sequence number."
            },
        )
        dedupe_window: Duration = field(
            default=Duration(10.0),
            metadata={"doc": "dedupe = hash: how long a frame's content is remembered."},
        )

        def __post_init__(self) -> None:
            if (self.stream is None) == (self.channel is None):
                raise ValueError("set exactly one of stream (XADD) and channel (PUBLISH)")
            if self.stream == "" or self.channel == "":
                raise ValueError("stream and channel must not be empty")
            scheme = urlsplit(self.url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                shown = redact_url(self.url)
                raise ValueError(f"url must be redis://, rediss:// or unix://, got {shown!r}")
            check_redis_url(self.url)
            if self.max_len < 0:
                raise ValueError(f"max_len must not be negative, got {self.max_len}")
            if self.socket_timeout <= 0:
                raise ValueError("socket_timeout must be above 0")
            if self.pack < 1:
                raise ValueError(f"pack must be at least 1, got {self.pack}")
            if self.shards < 1:
                raise ValueError(f"shards must be at least 1, got {self.shards}")
            if self.min_age is not None and self.min_age < 0.001:
                raise ValueError("min_age must be at least 1ms")
            if self.dedupe_window < 0.001:
                raise ValueError("dedupe_window must be at least 1ms")
            if self.stream is None:
                stream_only = {
                    "min_age": self.min_age is not None,
                    "pack": self.pack != 1,
                    "shards": self.shards != 1,
                    "dedupe": self.dedupe != "none",
                }
                if wrong := [name for name, is_set in stream_only.items() if is_set]:
                    raise ValueError(f"{', '.join(wrong)}: for stream = ..., not channel")
            else:
                self._check_stream(self.stream)
            self._check_dedupe()

        def _check_stream(self, stream: str) -> None:
            placeholders = stream.count(SHARD)
            if placeholders > 1:
                raise ValueError(f"stream has {placeholders} %d placeholders: use one at most")
            if self.shards > 1 and not placeholders:
                raise ValueError(
                    'shards needs a stream template with %d in its hash tag, e.g. "{ticks.%d}:in"'
                )
            if placeholders and SHARD not in (hash_tag(stream) or ""):
                raise ValueError(
                    "the %d of a sharded stream goes inside its {hash tag}, so that the shards "
                    'spread over Redis Cluster slots: e.g. "{ticks.%d}:in"'
                )
            if self.dedupe == "hash" and ("{" in stream or "}" in stream) and not hash_tag(stream):
                raise ValueError(
                    "dedupe = hash: a stream name with braces needs a non-empty {hash tag}"
                )

        def _check_dedupe(self) -> None:
            if self.dedupe == "none":
                if self.dedupe_field:
                    raise ValueError('dedupe_field is for dedupe = "seq"')
                return
            if self.pack != 1:
                raise ValueError("dedupe needs pack = 1: two daemons pack their frames differently")
            if self.dedupe == "seq":
                if not self.dedupe_field:
                    raise ValueError('dedupe = "seq" needs dedupe_field (e.g. "seq")')
                if self.min_age is not None:
                    raise ValueError(
                        'min_age cannot trim a dedupe = "seq" stream: its entry IDs are '
                        "sequence numbers, not times; use max_len"
                    )
            elif self.dedupe_field:
                raise ValueError('dedupe_field is for dedupe = "seq"')

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._url_for_logs = redact_url(options.url)
        self._client: aioredis.Redis | None = None
        # The hot commands' connections (roundtrip.py); the client runs the rest.
        self._link: Link | None = None
        self._batcher = Batcher(self._flush, max_items=ROUND_TRIP_MAX)
        stream = options.stream
        self._streams = (
            [shard_stream(stream, n) for n in range(options.shards)] if stream is not None else []
        )
        self._script = SCRIPTS.get(options.dedupe, "")
        self._sha = hashlib.sha1(self._script.encode()).hexdigest() if self._script else ""
        self.stats = SinkStats()
        # handle_batch's fast path: one stream, no dedupe (see _xadd_plain).
        self._plain = len(self._streams) == 1 and not self._script
        #: Round trips made so far (each carries one or more messages).
        self.round_trips = 0

    @property
    def streams(self) -> list[str]:
        """The stream names written to: one, or one per shard."""
        return list(self._streams)

    async def start(self) -> None:
        """Create the client and check the server; a server that is down is only logged."""
        options = self.options
        # One immediate retry on a fresh connection covers a pooled connection that
        # died with a server restart; anything longer is an outage the daemon waits out.
        self._client = aioredis.Redis.from_url(
            options.url,
            socket_timeout=options.socket_timeout,
            socket_connect_timeout=options.socket_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._link = Link(options.url, timeout=options.socket_timeout)
        try:
            with anyio.fail_after(options.socket_timeout):
                await self._client.ping()
                if self._script:
                    await self._client.script_load(self._script)
        except (RedisError, OSError, TimeoutError) as exc:
            self._ctx.log.warning(
                "redis_unavailable", url=self._url_for_logs, error=f"{type(exc).__name__}: {exc}"
            )

    async def stop(self) -> None:
        """Close the client's connections; log the stream counters."""
        client, self._client = self._client, None
        link, self._link = self._link, None
        if self._streams:
            self._ctx.log.info(
                "sink_totals",
                streams=len(self._streams),
                round_trips=self.round_trips,
                **dataclasses.asdict(self.stats),
            )
        if client is not None:
            await client.aclose()
        if link is not None:
            await link.aclose()

    async def handle(self, message: Message) -> None:
        """XADD or PUBLISH the message; return once Redis answered (or it was a duplicate).

        Raises :class:`~wsroute.Unavailable` when Redis is (an outage).
        """
        item = self._item(message)
        try:
            await self._batcher.submit(item)
        except Exception as exc:
            outage = unavailable(exc)
            if outage is exc:
                raise
            raise outage from exc

    async def handle_batch(self, messages: list[Message]) -> dict[int, BaseException] | None:
        """XADD or PUBLISH the messages in one pipelined round trip (``pack`` frames per entry).

        Returns the positions of the messages that failed alone (Redis refused
        their command, a late frame under ``dedupe = "seq"``, a message without
        its ``dedupe_field``) with their errors, or ``None``; raises when the
        round trip itself failed, which fails every message of the call. An
        outage (a lost connection, ``LOADING``...) is :class:`~wsroute.Unavailable`.
        """
        try:
            failures = await self._handle_batch(messages)
        except Exception as exc:
            outage = unavailable(exc)
            if outage is exc:
                raise
            raise outage from exc
        if failures:
            return {position: unavailable(error) for position, error in failures.items()}
        return None

    async def _handle_batch(self, messages: list[Message]) -> dict[int, BaseException] | None:
        if self._plain:
            try:
                commands = self._plain_xadds(messages)
            except Exception:  # a message's own problem: reported alone below
                pass
            else:
                return await self._xadd_plain(commands, len(messages))
        items: list[Any] = []
        positions: list[int] = []
        failures: dict[int, BaseException] = {}
        for position, message in enumerate(messages):
            try:
                items.append(self._item(message))
            except Exception as exc:  # this message's own problem (no dedupe_field, say)
                failures[position] = exc
                continue
            positions.append(position)
        if items:
            results = await self._flush(items)
            for position, result in zip(positions, results, strict=True):
                if isinstance(result, Exception):
                    failures[position] = result
        return failures or None

    def _item(self, message: Message) -> _Entry | bytes:
        """What one message becomes: a channel's JSON record, or a stream entry."""
        streams = self._streams
        if not streams:
            return encode_record(message)[:-1]
        fields = encode_entry_bytes(message)
        stream = streams[0] if len(streams) == 1 else streams[shard_of(fields["key"], len(streams))]
        entry = _Entry(stream, fields)
        dedupe = self.options.dedupe
        if dedupe == "seq":
            entry.seq = upstream_seq(message, self.options.dedupe_field)
        elif dedupe == "hash":
            entry.content_key = dedupe_key(stream, fields)
        return entry

    async def _flush(self, items: list[Any]) -> list[Any]:
        """One round trip for ``items``: one result per item, an ``Exception`` for a failed one."""
        client, link = self._client, self._link
        if client is None or link is None:
            raise RuntimeError("the redis handler is not started")
        self.round_trips += 1
        if not self._streams:
            channel = self.options.channel
            assert channel is not None
            return await round_trip(
                link, [("PUBLISH", channel, payload) for payload in items], retry_stale=True
            )
        if not self._script:
            return await self._xadd(link, items)
        replies = await self._run_scripts(link, items)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis lost its script cache (a restart): load it and run the batch again.
            # Entries stored the first time come back as duplicates, so this is safe.
            await client.script_load(self._script)
            replies = await self._run_scripts(link, items)
        return self._script_results(items, replies)

    def _trim(self) -> tuple[str, str]:
        """XADD's trimming for this round trip: ("MINID", id), ("MAXLEN", n) or none."""
        options = self.options
        if options.min_age is not None:
            return "MINID", str(max(0, time.time_ns() // 1_000_000 - round(options.min_age * 1000)))
        if options.max_len:
            return "MAXLEN", str(options.max_len)
        return "", ""

    def _xtrims(self, streams: set[str]) -> list[Command]:
        """min_age with max_len: XADD trims by age, one XTRIM per stream caps the length."""
        if self.options.min_age is None or not self.options.max_len:
            return []
        return [
            ["XTRIM", stream, "MAXLEN", "~", self.options.max_len] for stream in sorted(streams)
        ]

    def _check_xtrims(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                self.stats.trim_errors += 1
                self._ctx.log.warning("trim_failed", error=f"{type(reply).__name__}: {reply}")

    async def _xadd(self, link: Link, items: list[_Entry]) -> list[Any]:
        """Plain XADDs: per stream, in order, ``pack`` frames per entry."""
        strategy, threshold = self._trim()
        head: list[Any] = [strategy, "~", threshold, "*"] if strategy else ["*"]
        pack = self.options.pack
        groups: list[tuple[str, list[_Entry]]]
        if len(self._streams) == 1:
            groups = [(self._streams[0], items)]
        else:
            by_stream: dict[str, list[_Entry]] = {}
            for item in items:
                by_stream.setdefault(item.stream, []).append(item)
            groups = list(by_stream.items())
        commands: list[Command] = []
        chunks: list[list[_Entry]] = []
        for stream, entries in groups:
            for start in range(0, len(entries), pack):
                chunk = entries[start : start + pack]
                chunks.append(chunk)
                if len(chunk) == 1:
                    fields = chunk[0].fields
                else:
                    fields = pack_entry_bytes([entry.fields for entry in chunk])
                commands.append(
                    ("XADD", stream, *head, *[part for pair in fields.items() for part in pair])
                )
        trims = self._xtrims({stream for stream, _ in groups})
        commands.extend(trims)
        replies = await round_trip(link, commands, retry_stale=True)
        self._check_xtrims(replies[len(chunks) :])
        results: list[Any] = []  # in the order of the chunks
        stats = self.stats
        for chunk, reply in zip(chunks, replies[: len(chunks)], strict=True):
            if not isinstance(reply, Exception):
                stats.entries += 1
                stats.frames += len(chunk)
                reply = reply.decode() if isinstance(reply, bytes) else reply
            results.extend([reply] * len(chunk))
        if len(groups) == 1:
            return results
        by_entry = {id(entry): reply for entry, reply in zip(_flat(chunks), results, strict=True)}
        return [by_entry[id(item)] for item in items]

    def _plain_xadds(self, messages: list[Message]) -> list[Command]:
        """The ``XADD``s of :meth:`_xadd_plain`: one per message, or ``pack`` frames each."""
        stream = self._streams[0]
        strategy, threshold = self._trim()
        head: tuple[Any, ...] = ("XADD", stream, "*")
        if strategy:
            head = ("XADD", stream, strategy, "~", threshold, "*")
        pack = self.options.pack
        commands: list[Command] = []
        add = commands.append
        if pack == 1:
            for message in messages:
                fields = encode_entry_bytes(message)
                add((*head, *[part for pair in fields.items() for part in pair]))
            return commands
        for start in range(0, len(messages), pack):
            chunk = messages[start : start + pack]
            fields = encode_entry_bytes(chunk[0]) if len(chunk) == 1 else pack_messages(chunk)
            add((*head, *[part for pair in fields.items() for part in pair]))
        return commands

    async def _xadd_plain(
        self, commands: list[Command], count: int
    ) -> dict[int, BaseException] | None:
        """:meth:`_xadd` for ``handle_batch`` on one stream without dedupe, with no
        per-frame objects: the failures by position, as :meth:`handle_batch` returns them."""
        link = self._link
        if link is None:
            raise RuntimeError("the redis handler is not started")
        self.round_trips += 1
        stream = self._streams[0]
        pack = self.options.pack
        entries = len(commands)
        commands.extend(self._xtrims({stream}))
        replies = await round_trip(link, commands, retry_stale=True)
        if len(replies) > entries:
            self._check_xtrims(replies[entries:])
        failures: dict[int, BaseException] | None = None
        stored = entries
        for index in range(entries):
            reply = replies[index]
            if isinstance(reply, Exception):
                stored -= 1
                if failures is None:
                    failures = {}
                for position in range(index * pack, min(count, (index + 1) * pack)):
                    failures[position] = reply
        stats = self.stats
        stats.entries += stored
        stats.frames += count - (len(failures) if failures else 0)
        return failures

    async def _run_scripts(self, link: Link, items: list[_Entry]) -> list[Any]:
        """One EVALSHA per entry, in the order of the upstream's sequence for ``seq``."""
        strategy, threshold = self._trim()
        window = str(max(1, round(self.options.dedupe_window * 1000)))
        order = list(range(len(items)))
        if self.options.dedupe == "seq":
            # Retried frames rejoin in their place: an ID above a frame still to come
            # would make that frame late.
            order.sort(key=lambda i: (items[i].stream, items[i].seq))
        commands: list[Command] = []
        for index in order:
            item = items[index]
            flat = [part for pair in item.fields.items() for part in pair]
            if self.options.dedupe == "seq":
                keys = [item.stream]
                first = f"0-{item.seq}"
            else:
                keys = [item.content_key, item.stream]
                first = window
            commands.append(
                ("EVALSHA", self._sha, len(keys), *keys, first, strategy, threshold, *flat)
            )
        commands.extend(self._xtrims({item.stream for item in items}))
        # Packed by hiredis (roundtrip.py), as the plain XADDs are; a NOSCRIPT reply
        # comes back as the NoScriptError in its place.
        replies = await round_trip(link, commands, retry_stale=True)
        self._check_xtrims(replies[len(items) :])
        in_order: list[Any] = [None] * len(items)
        for index, reply in zip(order, replies[: len(items)], strict=True):
            in_order[index] = reply
        return in_order

    def _script_results(self, items: list[_Entry], replies: list[Any]) -> list[Any]:
        """The stored entry's ID, ``None`` for a duplicate, or the item's error."""
        results: list[Any] = []
        for item, reply in zip(items, replies, strict=True):
            if isinstance(reply, Exception):
                results.append(reply)
                continue
            status = int(reply[0])
            if status == 1:
                self.stats.entries += 1
                self.stats.frames += 1
                results.append(_text(reply[1]))
            elif status == 0:
                self.stats.duplicates += 1
                results.append(None)
            else:
                self.stats.late += 1
                results.append(self._late(item, _text(reply[1])))
        return results

    def _late(self, item: _Entry, top: str) -> DedupeError:
        if not top.startswith("0-"):
            return DedupeError(
                f'dedupe = "seq": stream {item.stream!r} holds entries with time-based IDs '
                f"(top {top}); it needs a stream of its own, written with dedupe = seq only"
            )
        return DedupeError(
            f"seq {item.seq} came after seq {top[2:]} was stored in {item.stream!r}: it cannot "
            "be stored in order (the upstream's sequence went back, or this frame was held up "
            "by a retry)"
        )


def _flat(chunks: list[list[_Entry]]) -> list[_Entry]:
    return [entry for chunk in chunks for entry in chunk]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
