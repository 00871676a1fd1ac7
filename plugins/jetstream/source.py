"""The ``jetstream`` source: a worker daemon pulling from a NATS JetStream stream.

Needs the ``nats`` extra (``pip install 'wsroute[nats]'``). An ingest daemon's
``nats`` sink (``jetstream = true``, ``payload = "frame"``) publishes one
message per frame; every worker of a pool pulls from one durable consumer, in
batches, decodes each message with the source's codec (:mod:`.entry`: the
same fields and decode path as a Redis stream entry) and routes it like a
connection's frame. Built on the public source API only.

The promises, and how they are kept:

- **At least once.** A message is acknowledged only once every routed handler
  handled it or its dead letter was written (``SourceContext.deliver``'s
  ``on_settled``). What a worker never settles — it died, hung, or was stopped —
  JetStream delivers again after ``ack_wait``; what it still holds at a clean
  stop is negatively acknowledged (``released``) and redelivered at once.
  Handlers must be idempotent: a message can arrive twice.
- **Slow handlers keep their messages.** Every ``ack_wait / 3`` the worker
  sends an in-progress ack (``+WPI``) for each message it holds, so JetStream
  does not give a message a slow handler still works on to another worker.
- **Poison.** With ``max_deliveries`` set, a message JetStream delivered more
  often than that (its ``num_delivered``) is dead-lettered (reason
  ``max_deliveries``) and acknowledged without being routed. The consumer's own
  ``max_deliver`` stays unlimited, so that a last delivery lost with a dying
  worker is delivered again rather than dropped (:func:`.consumer.max_deliver`).
  Redeliveries are then pulled and handled one at a time, so a crash blames only
  the message in flight, not the ones pulled with it.
- **Bounded.** At most ``max_in_flight`` messages pulled and not settled.
- **Outages and elections.** The client reconnects to any server of the
  cluster; a pull that fails (no server, no consumer leader yet) is retried with
  backoff, logged once per outage (:mod:`.consumer`).

Each message gets ``fields["stream_id"]`` (its stream sequence, in decimal) and,
when the sink sent it, ``fields["source_connection"]``; ``seq`` and
``received_at`` come from the headers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from functools import partial

import anyio
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from wsroute import DecodeError, Message, SourceContext, SourceLimits

from .consumer import ConsumerClient, describe
from .entry import entry_fields, jetstream_message, undecodable
from .options import FetchOptions, JetStreamOptions

__all__ = ["FetchOptions", "JetStreamSource", "JetStreamStats"]

# Settled messages are acknowledged this long after they settled at most, or at
# once when this many are waiting.
_ACK_EVERY = 0.02
_ACK_BATCH = 100
_NATS_ERRORS = (nats.errors.Error, OSError)


@dataclass
class JetStreamStats:
    """The source's counters; :attr:`JetStreamSource.stats`, logged as ``source_totals``."""

    pulled: int = 0  # messages pulled (first deliveries and redeliveries)
    redelivered: int = 0  # of those, delivered before (num_delivered > 1)
    delivered: int = 0  # routed (ctx.deliver)
    dead_lettered: int = 0  # decode_error, max_deliveries
    acked: int = 0
    released: int = 0  # held at a stop: negatively acknowledged, redelivered at once
    renewals: int = 0  # in-progress acks sent
    errors: int = 0  # failed pulls and acks (each retried)


class JetStreamSource:
    """Pull from a JetStream stream through a durable consumer (``type = "jetstream"``)."""

    Options = JetStreamOptions

    @classmethod
    def limits(cls, options: JetStreamOptions) -> SourceLimits:
        """For ``wsroute check``: a dead-letter handler when ``max_deliveries`` is set.

        No handler budget is checked against ``ack_wait``: the in-progress acks
        keep a slow handler's messages.
        """
        return SourceLimits(needs_dead_letter=options.max_deliveries > 0)

    def __init__(self, options: JetStreamOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx
        self.stats = JetStreamStats()
        self.log = ctx.log.bind(stream=options.stream, durable=options.durable)
        self.consumer = ConsumerClient(options, ctx.name, self.log)
        self._serial = options.max_deliveries > 0
        self._careful = self._serial  # pull one at a time (after a crash: redeliveries)
        # Messages this process holds, by stream sequence; each in at most one of them.
        self._in_flight: dict[int, Msg] = {}  # routed (or about to be), not settled
        self._dead: dict[int, Msg] = {}  # sent to the dead-letter handler, not written
        self._to_ack: dict[int, Msg] = {}  # settled, not acknowledged yet
        self._room: anyio.Event | None = None
        self._ack_now: anyio.Event | None = None
        self._waiting_for: dict[int, anyio.Event] = {}  # one-at-a-time redeliveries
        self._unread: dict[int, Msg] = {}  # pulled, not taken yet when the pull was cancelled

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Connect, set up the stream and consumer, then pull until cancelled."""
        options = self.options
        self.log.info(
            "source_started",
            ack_wait=options.ack_wait,
            max_deliveries=options.max_deliveries,
            batch=options.fetch.batch,
        )
        js = await self.consumer.connect()
        sub = await self.consumer.retry(
            "subscribe",
            partial(js.pull_subscribe_bind, durable=options.durable, stream=options.stream),
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._acker)
                tg.start_soon(self._renewer)
                await self._pull(sub)
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1),
                contextlib.suppress(*_NATS_ERRORS),
            ):
                await sub.unsubscribe()

    async def close(self) -> None:
        """After the drain: acknowledge what settled, release what did not, close the client."""
        released = {**self._unread, **self._in_flight, **self._dead}
        for held in (self._unread, self._in_flight, self._dead):
            held.clear()
        await self._send_acks()
        for msg in released.values():
            try:
                await msg.nak()
                self.stats.released += 1
            except _NATS_ERRORS as exc:
                self.stats.errors += 1
                self.log.warning("release_failed", error=describe(exc))
        if released:
            self.log.info("messages_released", count=len(released))
        self.stats.errors += self.consumer.errors
        self.log.info("source_totals", **dataclasses.asdict(self.stats))
        await self.consumer.close()

    # -- pulling -------------------------------------------------------------

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        fetch = self.options.fetch
        while True:
            room = await self._wait_room()
            batch = 1 if self._careful else min(fetch.batch, room)
            try:
                msgs = await sub.fetch(batch, timeout=float(fetch.wait))
            except TimeoutError:  # nothing new (nats-py's timeout is a TimeoutError)
                self.consumer.recovered("fetch")
                continue
            except _NATS_ERRORS as exc:
                self.consumer.failed("fetch", exc)
                await anyio.sleep(0.5)
                continue
            self.consumer.recovered("fetch")
            self._unread = {msg.metadata.sequence.stream: msg for msg in msgs}
            for msg in msgs:
                self._unread.pop(msg.metadata.sequence.stream, None)
                await self._take(msg)

    async def _take(self, msg: Msg) -> None:
        meta = msg.metadata
        sseq = meta.sequence.stream
        deliveries = meta.num_delivered
        self.stats.pulled += 1
        if deliveries > 1:
            self.stats.redelivered += 1
        if self._serial:
            self._careful = deliveries > 1
        for held in (self._in_flight, self._dead, self._to_ack):
            if sseq in held:
                held[sseq] = msg  # delivered again while held: renew and ack the newest
                return
        self._in_flight[sseq] = msg
        if not (self._serial and deliveries > 1):
            await self._deliver(sseq, msg, deliveries)
            return
        # A redelivery under max_deliveries: alone, and acknowledged before the next.
        event = self._waiting_for[sseq] = anyio.Event()
        await self._deliver(sseq, msg, deliveries)
        with anyio.move_on_after(self.options.ack_wait):
            await event.wait()
        self._waiting_for.pop(sseq, None)
        await self._send_acks()

    async def _deliver(self, sseq: int, msg: Msg, deliveries: int) -> None:
        ctx = self.ctx
        stored_at = msg.metadata.timestamp.timestamp()
        fields = entry_fields(msg.data, msg.headers, stored_at, self.options.payload)
        try:
            message = jetstream_message(ctx.name, sseq, fields, ctx.decode)
        except (ValueError, DecodeError) as exc:
            self.log.warning("message_undecodable", stream_seq=sseq, error=str(exc))
            letter = undecodable(ctx.name, sseq, fields)
            await self._dead_letter(sseq, letter, "decode_error", str(exc))
            return
        limit = self.options.max_deliveries
        if limit and deliveries > limit:
            message.fields["delivery_count"] = deliveries
            error = (
                f"message {sseq} delivered {deliveries} times without being acknowledged "
                f"(max_deliveries = {limit})"
            )
            self.log.error(
                "max_deliveries_exceeded", stream_seq=sseq, deliveries=deliveries, limit=limit
            )
            await self._dead_letter(sseq, message, "max_deliveries", error)
            return
        self.stats.delivered += 1
        await ctx.deliver(message, partial(self._settled, sseq))

    async def _dead_letter(self, sseq: int, message: Message, reason: str, error: str) -> None:
        msg = self._in_flight.pop(sseq)
        self._dead[sseq] = msg
        self.stats.dead_lettered += 1
        self._wake_reader()
        settled = partial(self._settled, sseq)
        await self.ctx.dead_letter(message, reason, error=error, on_settled=settled)

    def _settled(self, sseq: int) -> None:
        """on_settled: every routed handler finished, or the dead letter was written."""
        msg = self._in_flight.pop(sseq, None) or self._dead.pop(sseq, None)
        if msg is None:  # released by close() already: JetStream redelivers it
            return
        self._to_ack[sseq] = msg
        self._wake_reader()
        event = self._waiting_for.get(sseq)
        if event is not None:
            event.set()
        if len(self._to_ack) >= _ACK_BATCH and self._ack_now is not None:
            self._ack_now.set()

    # -- backpressure --------------------------------------------------------

    async def _wait_room(self) -> int:
        while (room := self.options.max_in_flight - len(self._in_flight)) <= 0:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        return room

    def _wake_reader(self) -> None:
        room = self._room
        if room is not None and len(self._in_flight) < self.options.max_in_flight:
            self._room = None
            room.set()

    # -- acknowledging and renewing -----------------------------------------

    async def _acker(self) -> None:
        while True:
            self._ack_now = anyio.Event()
            with anyio.move_on_after(_ACK_EVERY):
                await self._ack_now.wait()
            await self._send_acks()

    async def _send_acks(self) -> None:
        """Acknowledge every settled message (one publish each, no round trip)."""
        while self._to_ack:
            sseq, msg = next(iter(self._to_ack.items()))
            try:
                await msg.ack()
            except nats.errors.MsgAlreadyAckdError:
                pass
            except _NATS_ERRORS as exc:
                # Closed or its buffer full: JetStream redelivers it after ack_wait.
                self.stats.errors += 1
                self.log.warning("ack_failed", stream_seq=sseq, error=describe(exc))
            else:
                self.stats.acked += 1
            self._to_ack.pop(sseq, None)

    async def _renewer(self) -> None:
        """Every ack_wait / 3: an in-progress ack for each message this process holds."""
        every = self.options.ack_wait / 3
        while True:
            await anyio.sleep(every)
            for msg in [*self._in_flight.values(), *self._dead.values()]:
                try:
                    await msg.in_progress()
                except _NATS_ERRORS as exc:
                    self.stats.errors += 1
                    self.log.debug("renewal_failed", error=describe(exc))
                    break
                self.stats.renewals += 1
