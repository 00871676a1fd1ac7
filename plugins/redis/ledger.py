"""What one ``redis-stream`` worker holds: entry IDs by state, the in-flight cap, the XACKs.

Every entry ID the worker holds is in exactly one of: *in flight* (routed, not
settled), *dead* (sent to the dead-letter handler, not written yet), *to ack*
(settled, ``XACK`` not sent) and *acking* (``XACK`` under way). :meth:`Ledger.take_ownership`
puts fresh IDs in flight and drops any already held, however they come back from
Redis; :meth:`Ledger.settled` moves one to *to ack*; the acker sends one ``XACK``
per batch (every ``_ACK_EVERY`` seconds, or at once when ``ACK_BATCH`` wait).
At most ``max_in_flight`` IDs are in flight: readers wait for room in
:meth:`Ledger.wait_room`, the reclaimer (``priority``) ahead of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
from redis.exceptions import RedisError

from .group import Entries, GroupCommands, describe
from .roundtrip import Link
from .source_options import StreamStats

__all__ = ["ACK_BATCH", "Ledger"]

# Settled IDs are acknowledged in one XACK at most this long after they settled,
# or at once when this many are waiting: one round trip per batch, not per message.
_ACK_EVERY = 0.05
ACK_BATCH = 100
_ACK_MAX = 1000  # IDs per XACK command
# close() acknowledges what settled during the drain within this budget.
_CLOSE_ACK_BUDGET = 5.0


class Ledger:
    """The entry IDs one consumer holds, by state; room for more; their acknowledgement."""

    def __init__(
        self, commands: GroupCommands, acks: Link, *, cap: int, stats: StreamStats, log: Any
    ) -> None:
        self.commands = commands
        self.acks = acks  # the XACKs' connections
        self.cap = cap
        self.stats = stats
        self.log = log
        self.in_flight: set[str] = set()  # routed, not settled yet
        self.dead: set[str] = set()  # sent to the dead-letter handler, not written yet
        self.to_ack: set[str] = set()  # settled, XACK not sent yet
        self.acking: set[str] = set()  # settled, XACK under way
        self.room: anyio.Event | None = None  # set when in-flight drops below the cap
        self._priority = 0  # reclaimers waiting for room: the reader lets them go first
        self.ack_now: anyio.Event | None = None  # set when a batch of acks is waiting
        self.waiting_for: dict[str, anyio.Event] = {}  # one-at-a-time redeliveries

    # -- holding -------------------------------------------------------------

    def take_ownership(self, entries: Entries) -> Entries:
        """Mark fresh entries in flight, synchronously; drop the ones this process holds.

        Whatever this process still holds (routed, dead-lettering, waiting for XACK)
        is never delivered a second time by it, however it comes back from Redis.
        """
        in_flight, dead, to_ack, acking = self.in_flight, self.dead, self.to_ack, self.acking
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

    def holds(self, entry_id: str) -> bool:
        return (
            entry_id in self.in_flight
            or entry_id in self.to_ack
            or entry_id in self.acking
            or entry_id in self.dead
        )

    def held(self) -> list[str]:
        """Every entry ID this process holds: the lease renews them."""
        return [*self.in_flight, *self.dead, *self.to_ack, *self.acking]

    @property
    def left_pending(self) -> int:
        """What stays pending in the group if the process stops now."""
        return len(self.in_flight) + len(self.dead) + len(self.to_ack)

    def dead_lettering(self, entry_id: str) -> None:
        """The entry goes to the dead-letter handler instead of being routed."""
        self.in_flight.discard(entry_id)
        self.dead.add(entry_id)
        self.wake_readers()

    def settled(self, entry_id: str) -> None:
        """on_settled: every routed handler finished (or the dead letter was written)."""
        self.in_flight.discard(entry_id)
        self.dead.discard(entry_id)
        to_ack = self.to_ack
        to_ack.add(entry_id)
        if self.room is not None:
            self.wake_readers()
        if self.waiting_for:
            event = self.waiting_for.get(entry_id)
            if event is not None:
                event.set()
        if len(to_ack) >= ACK_BATCH and self.ack_now is not None:
            self.ack_now.set()

    # -- backpressure --------------------------------------------------------

    async def wait_room(self, *, priority: bool = False) -> int:
        """Wait until fewer than ``max_in_flight`` entries are unsettled; return the room.

        While a ``priority`` caller (the reclaimer) waits, other callers wait behind it.
        """
        if priority:
            self._priority += 1
        try:
            while (room := self.cap - len(self.in_flight)) <= 0 or (
                self._priority and not priority
            ):
                if self.room is None:
                    self.room = anyio.Event()
                await self.room.wait()
        finally:
            if priority:
                self._priority -= 1
                self.wake_readers(force=True)
        return room

    def wake_readers(self, *, force: bool = False) -> None:
        room = self.room
        if room is not None and (force or len(self.in_flight) < self.cap):
            self.room = None
            room.set()

    # -- acknowledging -------------------------------------------------------

    def queue_acks(self, ids: list[str]) -> None:
        """Acknowledge IDs this process does not hold (gone from the stream) with the next XACK."""
        self.to_ack.update(ids)

    async def acker(self) -> None:
        """The background loop: one XACK per batch of settled IDs."""
        while True:
            self.ack_now = anyio.Event()
            with anyio.move_on_after(_ACK_EVERY):
                await self.ack_now.wait()
            while self.to_ack:
                await self.commands.call("xack", self.ack_batch)

    async def flush_acks(self) -> None:
        """XACK everything settled so far, including a batch the acker is sending right now."""
        while self.to_ack or self.acking:
            if self.to_ack:
                await self.commands.call("xack", self.ack_batch)
            else:
                await anyio.sleep(0.005)

    async def ack_batch(self) -> None:
        """One XACK of up to _ACK_MAX settled IDs; on failure they stay queued."""
        to_ack = self.to_ack
        if len(to_ack) <= _ACK_MAX:
            batch = list(to_ack)
            to_ack.clear()
        else:
            batch = list(_first(to_ack, _ACK_MAX))
            to_ack.difference_update(batch)
        if not batch:
            return
        self.acking.update(batch)
        try:
            # Packed by hiredis (roundtrip.py): a tenth of redis-py's cost per ID.
            commands = self.commands
            command = ("XACK", commands.stream, commands.group, *batch)
            (reply,) = await self.acks.round_trip([command])
            if isinstance(reply, Exception):
                raise reply
        except BaseException:
            self.acking.difference_update(batch)
            self.to_ack.update(batch)
            raise
        self.acking.difference_update(batch)
        self.stats.acked += len(batch)

    async def ack_settled(self) -> None:
        """At close, after the drain: acknowledge what settled, within a budget."""
        with anyio.move_on_after(_CLOSE_ACK_BUDGET):
            while self.to_ack:
                try:
                    await self.ack_batch()
                except (RedisError, OSError) as exc:
                    self.stats.redis_errors += 1
                    self.log.warning("ack_retry", error=describe(exc), waiting=len(self.to_ack))
                    await anyio.sleep(0.2)
        if self.to_ack:
            self.log.error(
                "ack_failed",
                count=len(self.to_ack),
                note="settled but not acknowledged: these entries will be delivered again",
            )


def _first(items: set[str], count: int) -> Iterator[str]:
    for n, item in enumerate(items):
        if n >= count:
            return
        yield item
