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

Where the pieces live: the options and counters are :mod:`.source_options`'s; the
entry format is :mod:`.entry`'s; Redis commands, their retries and group recovery
are :mod:`.group`'s; what the worker holds — every entry ID in exactly one of in
flight, dead-lettering, waiting for ``XACK``, ``XACK`` under way — the in-flight cap
and the batched ``XACK`` are :mod:`.ledger`'s; entries turned into routed messages
and dead letters are :mod:`.delivery`'s; reclaim and the lease are :mod:`.reclaim`'s.
This module is the consumer itself: start, read (own pending entries first, then
new ones), redeliveries one at a time, stop.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import anyio

# A missing redis-py is a ModuleNotFoundError the registry turns into "pip install
# 'wsroute[redis]'", naming the plugin.
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wsroute import SourceContext, SourceLimits

from .delivery import Delivery
from .group import Entries, GroupCommands, raw_reply, stream_entries
from .ledger import Ledger
from .reclaim import Reclaimer
from .roundtrip import Link
from .source_options import ReadOptions, StreamSourceOptions, StreamStats, default_consumer

__all__ = ["ReadOptions", "RedisStreamSource", "StreamStats", "default_consumer"]

# Trimmed IDs shown in one log line (the count is always complete).
_LOG_IDS = 20


class RedisStreamSource:
    """Consume a Redis stream as one consumer of a consumer group (``type = "redis-stream"``)."""

    Options = StreamSourceOptions

    @classmethod
    def limits(cls, options: StreamSourceOptions) -> SourceLimits:
        """For ``wsroute check``: handler budgets below min_idle, a dead-letter handler."""
        return SourceLimits(
            redelivery_after=float(options.reclaim.min_idle),
            needs_dead_letter=options.max_deliveries > 0,
        )

    def __init__(self, options: StreamSourceOptions, ctx: SourceContext) -> None:
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
        # XACKs go on connections of their own, packed by hiredis (roundtrip.py).
        self.acks = Link(options.url, timeout=10.0, connect_timeout=5.0, keepalive=True)
        self.ledger = Ledger(
            self.commands, self.acks, cap=options.max_in_flight, stats=self.stats, log=self.log
        )
        self.delivery = Delivery(
            ctx,
            self.ledger,
            max_deliveries=options.max_deliveries,
            stats=self.stats,
            log=self.log,
        )
        self.reclaimer = Reclaimer(
            self,
            self.commands,
            options.reclaim,
            consumer=self.consumer,
            serial=self._serial,
            stats=self.stats,
            log=self.log,
        )

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
            tg.start_soon(self.ledger.acker)
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
        await self.ledger.ack_settled()
        self.log.info(
            "source_totals",
            left_pending=self.ledger.left_pending,
            **dataclasses.asdict(self.stats),
        )
        await self.commands.client.aclose()
        await self.acks.aclose()

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

    # -- what reclaim and the lease need (reclaim.Holder) ----------------------

    def take_ownership(self, entries: Entries) -> Entries:
        return self.ledger.take_ownership(entries)

    def holds(self, entry_id: str) -> bool:
        return self.ledger.holds(entry_id)

    def held(self) -> list[str]:
        return self.ledger.held()

    async def wait_room(self, *, priority: bool = False) -> int:
        return await self.ledger.wait_room(priority=priority)

    def queue_acks(self, ids: list[str]) -> None:
        self.ledger.queue_acks(ids)

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
                self.ledger.settled(entry_id)  # acknowledge: it is gone, leave the PEL
        if not (redelivered and self._serial):
            await self.delivery.deliver_all(entries)
            return
        for entry_id, fields in entries:
            if not fields:
                continue
            deliveries = await self._deliveries(entry_id)
            event = self.ledger.waiting_for[entry_id] = anyio.Event()
            await self.delivery.deliver_one(entry_id, fields, deliveries=deliveries)
            # Wait for it to settle (a handler that hangs gets min_idle), then
            # acknowledge at once: a crash now can only blame the next entry.
            with anyio.move_on_after(self.options.reclaim.min_idle):
                await event.wait()
            self.ledger.waiting_for.pop(entry_id, None)
            await self.ledger.flush_acks()

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
