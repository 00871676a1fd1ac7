"""Taking over what other workers left, and keeping what this one holds: reclaim and lease.

The ``redis-stream`` source's two background loops on the group's pending
entries list (PEL):

- :meth:`Reclaimer.reclaim`: every ``reclaim.every``, one cheap ``XPENDING``
  looks for an entry idle for ``reclaim.min_idle``; when there is one, it
  follows ``XAUTOCLAIM``'s cursor through the PEL and hands what it claimed to
  the source as redeliveries.
- :meth:`Reclaimer.lease`: every ``reclaim.min_idle / 3``, ``XCLAIM ... JUSTID``
  of everything this process holds resets those entries' idle time (their
  delivery count unchanged), so other workers' reclaim leaves a slow handler's
  entries alone.

Invariants:

- An entry this process holds (routed, dead-lettering, waiting for ``XACK``)
  is never handed to the source a second time, however it comes back
  (:meth:`Holder.take_ownership` drops it).
- Reclaimed entries are older than anything new: while the reclaimer waits for
  in-flight room, the source's reader waits behind it.
- Under ``max_deliveries`` entries are claimed one at a time, so that a crash
  blames only the entry that was in flight.
- An ID ``XAUTOCLAIM`` reports deleted from the stream (Redis >= 7) and not
  held here is reported as trimmed data loss and queued for ``XACK``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from structlog.typing import FilteringBoundLogger

from wsroute import Duration

from .group import Entries, GroupCommands, autoclaim_reply

if TYPE_CHECKING:
    from .source import StreamStats

__all__ = ["Holder", "ReclaimOptions", "Reclaimer"]

_CLAIM_MAX = 1000  # IDs per XCLAIM command


@dataclass
class ReclaimOptions:
    """``reclaim = { min_idle, every, count }``: taking over entries other workers left."""

    min_idle: Duration = field(
        default=Duration(30.0),
        metadata={
            "doc": "An entry pending this long without its worker renewing it is taken over "
            "(XAUTOCLAIM). Keep it above the routed handlers' timeout x (retries + 1)."
        },
    )
    every: Duration = field(
        default=Duration(5.0), metadata={"doc": "How often to look for such entries."}
    )
    count: int = field(default=100, metadata={"doc": "Entries claimed per XAUTOCLAIM (at most)."})

    def __post_init__(self) -> None:
        if self.min_idle < 0.001:
            raise ValueError(f"reclaim.min_idle must be at least 1ms, got {self.min_idle:g}s")
        if self.every <= 0:
            raise ValueError(f"reclaim.every must be positive, got {self.every:g}s")
        if self.count < 1:
            raise ValueError(f"reclaim.count must be at least 1, got {self.count}")


class Holder(Protocol):
    """What reclaim and the lease need from the source: its holdings and its delivery."""

    def held(self) -> list[str]:
        """Every entry ID this process holds, in whatever state."""
        ...

    def holds(self, entry_id: str) -> bool:
        """Whether this process holds the entry."""
        ...

    async def wait_room(self, *, priority: bool = False) -> int:
        """Wait for in-flight room; the room."""
        ...

    def take_ownership(self, entries: Entries) -> Entries:
        """Mark fresh entries in flight; drop the ones already held."""
        ...

    async def handle_entries(
        self, entries: Entries, *, redelivered: bool, found_by: str = "xreadgroup"
    ) -> None:
        """Route entries taken into flight."""
        ...

    def report_trimmed(self, ids: list[str], found_by: str) -> None:
        """Count and log pending entries trimmed away before being handled."""
        ...

    def queue_acks(self, ids: list[str]) -> None:
        """Acknowledge IDs with the next XACK."""
        ...


class Reclaimer:
    """The reclaim and lease loops of one consumer (run each in the source's task group)."""

    def __init__(
        self,
        holder: Holder,
        commands: GroupCommands,
        options: ReclaimOptions,
        *,
        consumer: str,
        serial: bool,
        stats: StreamStats,
        log: FilteringBoundLogger,
    ) -> None:
        self.holder = holder
        self.commands = commands
        self.options = options
        self.consumer = consumer
        self.serial = serial
        self.stats = stats
        self.log = log
        self.min_idle_ms = max(1, round(options.min_idle * 1000))

    async def reclaim(self) -> None:
        """Take over entries other workers left idle, following XAUTOCLAIM's cursor.

        Reclaimed entries are older than anything new, so when a probe finds idle
        entries the reclaimer takes the next free in-flight room before the reader.
        """
        options = self.options
        commands = self.commands
        holder = self.holder
        cursor = "0-0"
        while True:
            await anyio.sleep(options.every)
            if not await self._anything_idle():
                cursor = "0-0"
                continue
            while True:
                room = await holder.wait_room(priority=True)
                count = 1 if self.serial else min(options.count, room)
                reply = await commands.call(
                    "xautoclaim",
                    partial(
                        commands.client.xautoclaim,
                        commands.stream,
                        commands.group,
                        self.consumer,
                        self.min_idle_ms,
                        cursor,
                        count=count,
                    ),
                )
                cursor, claimed, deleted = autoclaim_reply(reply)
                gone = [i for i in deleted if not holder.holds(i)]
                if gone:
                    holder.report_trimmed(gone, "xautoclaim")
                    holder.queue_acks(gone)  # already out of the PEL; harmless, explicit
                taken = holder.take_ownership(claimed)
                self.stats.reclaimed += len(taken)
                if taken:
                    self.log.info("entries_reclaimed", count=len(taken), first=taken[0][0])
                    await holder.handle_entries(taken, redelivered=True, found_by="xautoclaim")
                if cursor == "0-0":
                    break

    async def _anything_idle(self) -> bool:
        """Whether any pending entry of the group sat idle for min_idle (one cheap XPENDING)."""
        commands = self.commands
        rows = await commands.call(
            "xpending",
            partial(
                commands.client.xpending_range,
                commands.stream,
                commands.group,
                "-",
                "+",
                1,
                idle=self.min_idle_ms,
            ),
        )
        return bool(rows)

    async def lease(self) -> None:
        """Reset the idle time of what this process holds, so no other worker reclaims it."""
        interval = self.options.min_idle / 3
        while True:
            await anyio.sleep(interval)
            await self.commands.call("xclaim", self._renew)

    async def _renew(self) -> None:
        commands = self.commands
        held: list[Any] = self.holder.held()
        for start in range(0, len(held), _CLAIM_MAX):
            await commands.client.xclaim(
                commands.stream,
                commands.group,
                self.consumer,
                0,
                held[start : start + _CLAIM_MAX],
                justid=True,
            )
