"""The ``redis-stream`` source: a worker daemon consuming a Redis stream through a consumer group.

Needs the ``redis`` extra (``pip install 'wsroute[redis]'``). An ingest daemon's
``redis`` sink writes one entry per frame (``frame``, ``connection``, ``key``, ``seq``,
``received_at``, ``kind = "text"`` for text frames; or a ``pack``); this source reads
them with ``XREADGROUP``, decodes ``frame`` with the source's codec, routes the message
like a connection's, and acknowledges the entry (``XACK``) only once every routed
handler has handled it or its dead letter was written. Built on the public source API
only (:class:`~wsroute.Source`, :class:`~wsroute.SourceContext`).

The promises, and how they are kept:

- **At least once.** An entry leaves the group's pending list only through ``XACK``
  of a settled message. What a worker holds when it stops or dies stays pending: its
  own restart re-reads it first (same ``consumer`` name), other workers reclaim it
  with ``XAUTOCLAIM`` once it sat idle for ``reclaim.min_idle``. Handlers must be
  idempotent: a message can arrive twice.
- **No redelivery storms.** Handler failures go through the daemon's retries and
  dead letters and end in an ``XACK`` like a success. Redis redelivers only what a
  worker never settled: a process that crashed, hung or was stopped.
- **Poison entries.** With ``max_deliveries`` set, an entry Redis delivered more often
  than that is dead-lettered (reason ``max_deliveries``, the delivery count and the
  entry ID in the error text and in ``fields``) and acknowledged without being routed.
  Redelivered entries are then handled one at a time and acknowledged at once, so a
  crash blames only the entry that was in flight, not the ones read with it.
- **Bounded.** At most ``max_in_flight`` entries are read and not yet settled;
  backpressure from a full ``block`` queue stops reading too. The worker's share of
  the pending list stays bounded.
- **The lease.** While a slow handler still runs, the worker re-claims its in-flight
  entries every ``reclaim.min_idle / 3`` (``XCLAIM ... JUSTID``: idle time reset,
  delivery count unchanged) so other workers' reclaim does not take them. Without
  it (``lease = false``), an entry held longer than ``min_idle`` is handled twice.
- **Nothing silently skipped.** A pending entry trimmed out of the stream before any
  worker handled it is counted (``trimmed_unprocessed``) and logged as an error with
  its ID; a group that vanished (Redis restarted empty, stream deleted) is recreated
  with a loud error; outages are retried with capped, jittered backoff, forever.

Each message gets ``fields["stream_id"]`` (the entry ID) and, when the entry names
it, ``fields["source_connection"]`` (the ingest daemon's connection); ``seq`` and
``received_at`` come from the entry, ``connection`` is the source's own name. An
entry of ``kind = "message"`` (the sink had no raw frame: a lifecycle, emitted or
replayed message) carries a ``jsonl`` record and is rebuilt from it, not decoded.
A packed entry (``kind = "pack"``: the sink's ``pack`` option) becomes one message
per frame, each with ``fields["pack_index"]``; the entry is acknowledged once all of
them settled, and ``max_in_flight`` and ``max_deliveries`` count it as one entry.

Where the pieces live: the entry format is :mod:`.entry`'s (:func:`decode_message`,
:func:`unpack_frames`, :func:`decode_packed_message`); Redis commands, their retries
and group recovery are :mod:`.group`'s; reclaim and the lease are :mod:`.reclaim`'s.
This module holds the consumer's state — every entry ID it holds is in exactly one
of in flight, dead-lettering, waiting for ``XACK``, ``XACK`` under way — and moves
IDs through it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import anyio

# A missing redis-py is a ModuleNotFoundError the registry turns into "pip install
# 'wsroute[redis]'", naming the plugin.
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from wsroute import DecodeError, Duration, Message, SourceContext, SourceLimits

from .entry import (
    KIND_PACK,
    decode_message,
    decode_packed_message,
    undecodable_message,
    unpack_frames,
)
from .group import Entries, GroupCommands, describe, raw_reply, stream_entries
from .reclaim import Reclaimer, ReclaimOptions
from .roundtrip import round_trip

__all__ = ["ReadOptions", "RedisStreamSource", "StreamStats", "default_consumer"]

_KIND_PACK = KIND_PACK.encode()

# Settled IDs are acknowledged in one XACK at most this long after they settled,
# or at once when this many are waiting: one round trip per batch, not per message.
_ACK_EVERY = 0.05
_ACK_BATCH = 100
_ACK_MAX = 1000  # IDs per XACK command
# close() acknowledges what settled during the drain within this budget.
_CLOSE_ACK_BUDGET = 5.0
# Trimmed IDs shown in one log line (the count is always complete).
_LOG_IDS = 20


def default_consumer() -> str:
    """``<hostname>:<instance>``: ``$WSROUTE_INSTANCE`` (set it per systemd instance), else 1."""
    return f"{socket.gethostname()}:{os.environ.get('WSROUTE_INSTANCE') or '1'}"


@dataclass
class ReadOptions:
    """``read = { count, block }``: how new entries are fetched."""

    count: int = field(default=100, metadata={"doc": "Entries fetched per XREADGROUP (at most)."})
    block: Duration = field(
        default=Duration(1.0),
        metadata={"doc": "How long one XREADGROUP waits for new entries (BLOCK)."},
    )

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"read.count must be at least 1, got {self.count}")
        if self.block < 0.001:
            # BLOCK 0 means "forever" to Redis: shutdown and outages would go unnoticed.
            raise ValueError(f"read.block must be at least 1ms, got {self.block:g}s")


@dataclass
class StreamStats:
    """The source's counters; :attr:`RedisStreamSource.stats`, logged as ``source_totals``."""

    read: int = 0  # entries taken from Redis: new, own pending and reclaimed
    recovered: int = 0  # of those, this consumer's own pending entries re-read at start
    reclaimed: int = 0  # of those, idle entries taken over with XAUTOCLAIM
    delivered: int = 0  # routed (ctx.deliver)
    dead_lettered: int = 0  # sent to the dead-letter handler: decode_error, max_deliveries
    acked: int = 0  # IDs acknowledged with XACK
    trimmed_unprocessed: int = 0  # pending entries found trimmed away: data loss
    groups_recreated: int = 0
    redis_errors: int = 0  # failed commands (each retried)


class RedisStreamSource:
    """Consume a Redis stream as one consumer of a consumer group (``type = "redis-stream"``)."""

    @dataclass
    class Options:
        stream: str = field(
            metadata={"doc": 'The stream key, e.g. "{ticks}:in" (braces: a Cluster hash tag).'}
        )
        url: str = field(
            default="redis://127.0.0.1:6379/0",
            metadata={"doc": "redis:// or rediss:// URL (password, database number)."},
        )
        group: str = field(default="wsroute", metadata={"doc": "The consumer group."})
        consumer: str = field(
            default="",
            metadata={
                "doc": "This worker's name in the group: unique per live process, the same "
                "after a restart (empty: <hostname>:<$WSROUTE_INSTANCE or 1>)."
            },
        )
        create_group: Literal["oldest", "newest", "no"] = field(
            default="oldest",
            metadata={
                "doc": "Create a missing group (and stream) starting at the oldest entry, "
                "at new entries only, or not at all (wait for it, logging errors)."
            },
        )
        read: ReadOptions = field(default_factory=ReadOptions, metadata={"doc": "{ count, block }"})
        reclaim: ReclaimOptions = field(
            default_factory=ReclaimOptions, metadata={"doc": "{ min_idle, every, count }"}
        )
        lease: bool = field(
            default=True,
            metadata={
                "doc": "Renew in-flight entries every reclaim.min_idle / 3 so other workers "
                "do not take them from a slow handler (off: such an entry is handled twice)."
            },
        )
        max_deliveries: int = field(
            default=0,
            metadata={
                "doc": "Dead-letter an entry delivered more often than this without being "
                "acknowledged (it crashes or hangs the process); 0: never. Needs a "
                "dead-letter handler."
            },
        )
        max_in_flight: int = field(
            default=1000,
            metadata={"doc": "Entries read and not yet settled, at most (backpressure)."},
        )

        def __post_init__(self) -> None:
            for name in ("stream", "group"):
                if not getattr(self, name):
                    raise ValueError(f"{name} must not be empty")
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                # Only the scheme: the rest of the URL may hold a password.
                scheme = self.url.partition(":")[0]
                raise ValueError(f"url must be redis://, rediss:// or unix://, not {scheme!r}")
            if self.max_deliveries < 0:
                raise ValueError(f"max_deliveries must not be negative, got {self.max_deliveries}")
            if self.max_in_flight < 1:
                raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")

    @classmethod
    def limits(cls, options: RedisStreamSource.Options) -> SourceLimits:
        """For ``wsroute check``: handler budgets below min_idle, a dead-letter handler."""
        return SourceLimits(
            redelivery_after=float(options.reclaim.min_idle),
            needs_dead_letter=options.max_deliveries > 0,
        )

    def __init__(self, options: Options, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx
        self.consumer = options.consumer or default_consumer()
        self.stats = StreamStats()
        self.log = ctx.log.bind(stream=options.stream, group=options.group, consumer=self.consumer)
        client = aioredis.Redis.from_url(
            options.url,
            socket_connect_timeout=5.0,
            # A blocked XREADGROUP must not look like a dead socket.
            socket_timeout=max(10.0, options.read.block + 5.0),
            socket_keepalive=True,
            # Retries (with backoff and logging) are ours: see GroupCommands.call.
            retry=Retry(NoBackoff(), 0),
        )
        # XREADGROUP's reply as Redis sent it: stream_entries() turns it into entries
        # in one pass (redis-py's own parsing walked every entry twice more).
        client.set_response_callback("XREADGROUP", raw_reply)
        self.commands = GroupCommands(
            client,
            stream=options.stream,
            group=options.group,
            create_group=options.create_group,
            stats=self.stats,
            log=self.log,
        )
        self._serial = options.max_deliveries > 0
        self.reclaimer = Reclaimer(
            self,
            self.commands,
            options.reclaim,
            consumer=self.consumer,
            serial=self._serial,
            stats=self.stats,
            log=self.log,
        )
        # Entry IDs this process holds, by state; an ID is in at most one of them.
        self._in_flight: set[str] = set()  # routed, not settled yet
        self._dead: set[str] = set()  # sent to the dead-letter handler, not written yet
        self._to_ack: set[str] = set()  # settled, XACK not sent yet
        self._acking: set[str] = set()  # settled, XACK under way
        self._room: anyio.Event | None = None  # set when in-flight drops below the cap
        self._priority = 0  # reclaimers waiting for room: the reader lets them go first
        self._ack_now: anyio.Event | None = None  # set when a batch of acks is waiting
        self._waiting_for: dict[str, anyio.Event] = {}  # one-at-a-time redeliveries

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Create the group, re-read this consumer's pending entries, then read new ones."""
        options = self.options
        self.log.info(
            "source_started",
            create_group=options.create_group,
            lease=options.lease,
            max_deliveries=options.max_deliveries,
            min_idle=options.reclaim.min_idle,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker)
            if options.lease:
                tg.start_soon(self.reclaimer.lease)
            if options.create_group != "no":
                created = await self.commands.call("xgroup_create", self.commands.create_group)
                if created:
                    self.log.info("group_created", start=options.create_group)
            await self._recover_own()
            tg.start_soon(self.reclaimer.reclaim)
            await self._read_new()

    async def close(self) -> None:
        """After the drain: acknowledge what settled, log the totals, close the client."""
        with anyio.move_on_after(_CLOSE_ACK_BUDGET):
            while self._to_ack:
                try:
                    await self._ack_batch()
                except (RedisError, OSError) as exc:
                    self.stats.redis_errors += 1
                    self.log.warning("ack_retry", error=describe(exc), waiting=len(self._to_ack))
                    await anyio.sleep(0.2)
        if self._to_ack:
            self.log.error(
                "ack_failed",
                count=len(self._to_ack),
                note="settled but not acknowledged: these entries will be delivered again",
            )
        self.log.info(
            "source_totals",
            left_pending=len(self._in_flight) + len(self._dead) + len(self._to_ack),
            **dataclasses.asdict(self.stats),
        )
        await self.commands.client.aclose()

    # -- reading -------------------------------------------------------------

    async def _recover_own(self) -> None:
        """Deliver this consumer's pending entries (left by its previous run) before new ones."""
        stream = self.options.stream
        after = "0-0"
        recovered = 0
        while True:
            count = 1 if self._serial else min(self.options.read.count, await self.wait_room())
            reply = await self.commands.call(
                "xreadgroup",
                partial(
                    self.commands.client.xreadgroup,
                    self.options.group,
                    self.consumer,
                    {stream: after},
                    count=count,
                ),
            )
            entries = stream_entries(reply)
            if not entries:
                break
            after = entries[-1][0]
            taken = self.take_ownership(entries)
            self.stats.recovered += len(taken)
            recovered += len(taken)
            await self.handle_entries(taken, redelivered=True)
        if recovered:
            self.log.info("pending_recovered", count=recovered)

    async def _read_new(self) -> None:
        options = self.options
        block = max(1, round(options.read.block * 1000))
        while True:
            count = min(options.read.count, await self.wait_room())
            reply = await self.commands.call(
                "xreadgroup",
                partial(
                    self.commands.client.xreadgroup,
                    options.group,
                    self.consumer,
                    {options.stream: ">"},
                    count=count,
                    block=block,
                ),
            )
            entries = self.take_ownership(stream_entries(reply))
            if entries:
                await self.handle_entries(entries, redelivered=False)

    def take_ownership(self, entries: Entries) -> Entries:
        """Mark fresh entries in flight, synchronously; drop the ones this process holds.

        Whatever this process still holds (routed, dead-lettering, waiting for XACK)
        is never delivered a second time by it, however it comes back from Redis.
        """
        in_flight, dead, to_ack, acking = self._in_flight, self._dead, self._to_ack, self._acking
        ids = [entry[0] for entry in entries]
        if (
            in_flight.isdisjoint(ids)
            and to_ack.isdisjoint(ids)
            and acking.isdisjoint(ids)
            and dead.isdisjoint(ids)
        ):  # the usual case, checked in C: none of them is held
            in_flight.update(ids)
            self.stats.read += len(entries)
            return entries
        taken = []
        for entry in entries:
            entry_id = entry[0]
            # self.holds(entry_id), inlined: this runs once per entry read.
            if (
                entry_id in in_flight
                or entry_id in to_ack
                or entry_id in acking
                or entry_id in dead
            ):
                continue
            in_flight.add(entry_id)
            taken.append(entry)
        self.stats.read += len(taken)
        return taken

    # -- delivering ----------------------------------------------------------

    async def handle_entries(
        self,
        entries: Entries,
        *,
        redelivered: bool,
        found_by: str = "xreadgroup",
    ) -> None:
        """Route entries taken into flight; redeliveries one at a time under max_deliveries.

        An entry without fields is one that was trimmed away while pending.
        """
        trimmed = [entry_id for entry_id, fields in entries if not fields]
        if trimmed:
            self.report_trimmed(trimmed, found_by)
            for entry_id in trimmed:
                self._settled(entry_id)  # acknowledge: it is gone, leave the PEL
        if not (redelivered and self._serial):
            await self._deliver_all(entries)
            return
        for entry_id, fields in entries:
            if not fields:
                continue
            deliveries = await self._deliveries(entry_id)
            event = self._waiting_for[entry_id] = anyio.Event()
            await self._deliver(entry_id, fields, deliveries=deliveries)
            # Wait for it to settle (a handler that hangs gets min_idle), then
            # acknowledge at once: a crash now can only blame the next entry.
            with anyio.move_on_after(self.options.reclaim.min_idle):
                await event.wait()
            self._waiting_for.pop(entry_id, None)
            await self._flush_acks()

    async def _deliveries(self, entry_id: str) -> int:
        """How often Redis delivered the entry (this delivery included); 0 if not pending."""
        rows = await self.commands.call(
            "xpending",
            partial(
                self.commands.client.xpending_range,
                self.options.stream,
                self.options.group,
                entry_id,
                entry_id,
                1,
            ),
        )
        return int(rows[0]["times_delivered"]) if rows else 0

    async def _deliver_all(self, entries: Entries) -> None:
        """Route entries read in one go (not counted redeliveries): one ``ctx.deliver_many``
        for every message of them (each frame of a pack), in order.

        An entry settles once all its messages did (a pack's dead-lettered frames
        included); undecodable entries and frames are dead-lettered on the way,
        before the batch is routed. The per-message path is inlined: it runs once
        per message a worker handles.
        """
        ctx = self.ctx
        name = ctx.name
        decode = ctx.decode
        messages: list[Message] = []
        owners: list[str] = []  # the entry ID of each message
        packs: dict[str, int] = {}  # a pack's frames not settled yet, by entry ID
        append, own = messages.append, owners.append
        for entry_id, fields in entries:
            if not fields:
                continue
            if fields.get(b"kind") == _KIND_PACK:
                await self._collect_pack(entry_id, fields, messages, owners, packs)
                continue
            try:
                message = decode_message(name, entry_id, fields, decode)
            except (ValueError, DecodeError) as exc:
                await self._undecodable(entry_id, fields, exc)
                continue
            append(message)
            own(entry_id)
        if not messages:
            return
        self.stats.delivered += len(messages)
        in_flight, to_ack = self._in_flight, self._to_ack

        def on_settled(index: int) -> None:
            # self._settled(entry_id), inlined for an entry that was routed: not
            # dead-lettering, and not waited for one at a time.
            entry_id = owners[index]
            if packs:
                left = packs.get(entry_id)
                if left is not None:
                    if left > 1:
                        packs[entry_id] = left - 1
                        return
                    del packs[entry_id]
            in_flight.discard(entry_id)
            to_ack.add(entry_id)
            if self._room is not None:
                self._wake_readers()
            if len(to_ack) >= _ACK_BATCH and self._ack_now is not None:
                self._ack_now.set()

        await ctx.deliver_many(messages, on_settled)

    async def _collect_pack(
        self,
        entry_id: str,
        fields: dict[bytes, bytes],
        messages: list[Message],
        owners: list[str],
        packs: dict[str, int],
    ) -> None:
        """:meth:`_deliver_pack` for :meth:`_deliver_all`: a pack's messages join the batch
        (``packs[entry_id]`` counts its frames); an undecodable frame is dead-lettered now."""
        ctx = self.ctx
        try:
            frames = unpack_frames(fields)
        except ValueError as exc:
            await self._undecodable_pack(entry_id, fields, exc)
            return
        packs[entry_id] = len(frames)
        name = ctx.name
        decode = ctx.decode
        for index, frame_fields in enumerate(frames):
            try:
                message = decode_packed_message(name, entry_id, frame_fields, decode)
            except (ValueError, DecodeError) as exc:
                letter = self._undecodable_frame(entry_id, frame_fields, index, exc)
                await ctx.dead_letter(
                    letter,
                    "decode_error",
                    error=str(exc),
                    on_settled=partial(self._pack_frame_settled, packs, entry_id),
                )
                continue
            message.fields["pack_index"] = index
            messages.append(message)
            owners.append(entry_id)

    def _pack_frame_settled(self, packs: dict[str, int], entry_id: str) -> None:
        """A frame of a pack collected by :meth:`_collect_pack` settled (its dead letter)."""
        left = packs[entry_id] - 1
        if left:
            packs[entry_id] = left
            return
        del packs[entry_id]
        self._settled(entry_id)

    def _undecodable_frame(
        self, entry_id: str, frame_fields: dict[str, bytes], index: int, exc: Exception
    ) -> Message:
        """The dead letter of one undecodable frame of a pack (counted and logged)."""
        as_stored = {key.encode(): value for key, value in frame_fields.items()}
        letter = undecodable_message(self.ctx.name, entry_id, as_stored)
        letter.fields["pack_index"] = index
        self.log.warning("entry_undecodable", stream_id=entry_id, pack_index=index, error=str(exc))
        self.stats.dead_lettered += 1
        return letter

    async def _undecodable_pack(
        self, entry_id: str, fields: dict[bytes, bytes], exc: ValueError
    ) -> None:
        """A pack whose frames cannot be read: the whole entry is one dead letter."""
        letter = undecodable_message(
            self.ctx.name, entry_id, {**fields, b"frame": fields.get(b"frames", b"")}
        )
        self.log.warning("entry_undecodable", stream_id=entry_id, error=str(exc))
        await self._dead_letter(entry_id, letter, "decode_error", str(exc))

    async def _deliver(self, entry_id: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        ctx = self.ctx
        limit = self.options.max_deliveries
        if fields.get(b"kind") == _KIND_PACK:
            await self._deliver_pack(entry_id, fields, deliveries)
            return
        try:
            message = decode_message(ctx.name, entry_id, fields, ctx.decode)
        except (ValueError, DecodeError) as exc:
            await self._undecodable(entry_id, fields, exc)
            return
        if limit and deliveries > limit:
            message.fields["delivery_count"] = deliveries
            error = (
                f"entry {entry_id} delivered {deliveries} times without being acknowledged "
                f"(max_deliveries = {limit})"
            )
            self.log.error(
                "max_deliveries_exceeded", stream_id=entry_id, deliveries=deliveries, limit=limit
            )
            await self._dead_letter(entry_id, message, "max_deliveries", error)
            return
        self.stats.delivered += 1
        await ctx.deliver(message, partial(self._settled, entry_id))

    async def _undecodable(
        self, entry_id: str, fields: dict[bytes, bytes], exc: ValueError | DecodeError
    ) -> None:
        letter = undecodable_message(self.ctx.name, entry_id, fields)
        self.log.warning("entry_undecodable", stream_id=entry_id, error=str(exc))
        await self._dead_letter(entry_id, letter, "decode_error", str(exc))

    async def _deliver_pack(
        self, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        """Deliver each frame of a packed entry; the entry settles once all of them did."""
        ctx = self.ctx
        try:
            frames = unpack_frames(fields)
        except ValueError as exc:
            await self._undecodable_pack(entry_id, fields, exc)
            return
        left = len(frames)

        def one_settled() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._settled(entry_id)

        limit = self.options.max_deliveries
        name = ctx.name
        decode = ctx.decode
        deliver = ctx.deliver
        stats = self.stats
        for index, frame_fields in enumerate(frames):
            try:
                message = decode_packed_message(name, entry_id, frame_fields, decode)
            except (ValueError, DecodeError) as exc:
                letter = self._undecodable_frame(entry_id, frame_fields, index, exc)
                await ctx.dead_letter(
                    letter, "decode_error", error=str(exc), on_settled=one_settled
                )
                continue
            message.fields["pack_index"] = index
            if limit and deliveries > limit:
                message.fields["delivery_count"] = deliveries
                error = (
                    f"entry {entry_id} delivered {deliveries} times without being acknowledged "
                    f"(max_deliveries = {limit})"
                )
                if index == 0:
                    self.log.error(
                        "max_deliveries_exceeded",
                        stream_id=entry_id,
                        deliveries=deliveries,
                        limit=limit,
                        frames=len(frames),
                    )
                stats.dead_lettered += 1
                await ctx.dead_letter(
                    message, "max_deliveries", error=error, on_settled=one_settled
                )
                continue
            stats.delivered += 1
            await deliver(message, one_settled)

    async def _dead_letter(self, entry_id: str, message: Message, reason: str, error: str) -> None:
        """Dead-letter without routing; acknowledged once the dead-letter handler wrote it."""
        self._in_flight.discard(entry_id)
        self._dead.add(entry_id)
        self.stats.dead_lettered += 1
        self._wake_readers()
        settled = partial(self._settled, entry_id)
        await self.ctx.dead_letter(message, reason, error=error, on_settled=settled)

    def _settled(self, entry_id: str) -> None:
        """on_settled: every routed handler finished (or the dead letter was written)."""
        self._in_flight.discard(entry_id)
        self._dead.discard(entry_id)
        to_ack = self._to_ack
        to_ack.add(entry_id)
        if self._room is not None:
            self._wake_readers()
        if self._waiting_for:
            event = self._waiting_for.get(entry_id)
            if event is not None:
                event.set()
        if len(to_ack) >= _ACK_BATCH and self._ack_now is not None:
            self._ack_now.set()

    def report_trimmed(self, ids: list[str], found_by: str) -> None:
        self.stats.trimmed_unprocessed += len(ids)
        self.log.error(
            "trimmed_unprocessed",
            count=len(ids),
            ids=ids[:_LOG_IDS],
            found_by=found_by,
            total=self.stats.trimmed_unprocessed,
            note="pending entries were trimmed out of the stream before being handled: "
            "data loss; raise the sink's max_len or add workers",
        )

    # -- backpressure --------------------------------------------------------

    def _cap(self) -> int:
        return self.options.max_in_flight

    def holds(self, entry_id: str) -> bool:
        return (
            entry_id in self._in_flight
            or entry_id in self._to_ack
            or entry_id in self._acking
            or entry_id in self._dead
        )

    def held(self) -> list[str]:
        """Every entry ID this process holds: the lease renews them."""
        return [*self._in_flight, *self._dead, *self._to_ack, *self._acking]

    async def wait_room(self, *, priority: bool = False) -> int:
        """Wait until fewer than ``max_in_flight`` entries are unsettled; return the room.

        While a ``priority`` caller (the reclaimer) waits, other callers wait behind it.
        """
        if priority:
            self._priority += 1
        try:
            while (room := self._cap() - len(self._in_flight)) <= 0 or (
                self._priority and not priority
            ):
                if self._room is None:
                    self._room = anyio.Event()
                await self._room.wait()
        finally:
            if priority:
                self._priority -= 1
                self._wake_readers(force=True)
        return room

    def _wake_readers(self, *, force: bool = False) -> None:
        room = self._room
        if room is not None and (force or len(self._in_flight) < self._cap()):
            self._room = None
            room.set()

    # -- acknowledging -------------------------------------------------------

    def queue_acks(self, ids: list[str]) -> None:
        """Acknowledge IDs this process does not hold (gone from the stream) with the next XACK."""
        self._to_ack.update(ids)

    async def _acker(self) -> None:
        while True:
            self._ack_now = anyio.Event()
            with anyio.move_on_after(_ACK_EVERY):
                await self._ack_now.wait()
            while self._to_ack:
                await self.commands.call("xack", self._ack_batch)

    async def _flush_acks(self) -> None:
        """XACK everything settled so far, including a batch the acker is sending right now."""
        while self._to_ack or self._acking:
            if self._to_ack:
                await self.commands.call("xack", self._ack_batch)
            else:
                await anyio.sleep(0.005)

    async def _ack_batch(self) -> None:
        """One XACK of up to _ACK_MAX settled IDs; on failure they stay queued."""
        to_ack = self._to_ack
        if len(to_ack) <= _ACK_MAX:
            batch = list(to_ack)
            to_ack.clear()
        else:
            batch = list(_first(to_ack, _ACK_MAX))
            to_ack.difference_update(batch)
        if not batch:
            return
        self._acking.update(batch)
        try:
            # Packed by hiredis (roundtrip.py): a tenth of redis-py's cost per ID.
            command = ("XACK", self.options.stream, self.options.group, *batch)
            (reply,) = await round_trip(self.commands.client, [command])
            if isinstance(reply, Exception):
                raise reply
        except BaseException:
            self._acking.difference_update(batch)
            self._to_ack.update(batch)
            raise
        self._acking.difference_update(batch)
        self.stats.acked += len(batch)


def _first(items: set[str], count: int) -> Iterator[str]:
    for n, item in enumerate(items):
        if n >= count:
            return
        yield item
