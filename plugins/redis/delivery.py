"""A ``redis-stream`` worker's delivery: entries read → messages routed or dead-lettered.

:meth:`Delivery.deliver_all` routes what one read returned with one
``ctx.deliver_many`` (every frame of a pack its own message, in order);
:meth:`Delivery.deliver_one` routes one redelivered entry, dead-lettering it
instead once Redis delivered it more than ``max_deliveries`` times. An entry
settles — and goes to the :class:`~.ledger.Ledger`'s acknowledgements — once
every message made from it did; undecodable entries and frames are
dead-lettered (reason ``decode_error``) on the way, never routed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from wsroute import DecodeError, Message, SourceContext

from .entry import (
    KIND_PACK,
    decode_message,
    decode_packed_message,
    undecodable_message,
    unpack_frames,
)
from .group import Entries
from .ledger import ACK_BATCH, Ledger
from .source_options import StreamStats

__all__ = ["Delivery"]

_KIND_PACK = KIND_PACK.encode()


class Delivery:
    """Turns one consumer's entries into routed messages and dead letters."""

    def __init__(
        self,
        ctx: SourceContext,
        ledger: Ledger,
        *,
        max_deliveries: int,
        stats: StreamStats,
        log: Any,
    ) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.max_deliveries = max_deliveries
        self.stats = stats
        self.log = log

    async def deliver_all(self, entries: Entries) -> None:
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
        ledger = self.ledger
        in_flight, to_ack = ledger.in_flight, ledger.to_ack

        def on_settled(index: int) -> None:
            # ledger.settled(entry_id), inlined for an entry that was routed: not
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
            if ledger.room is not None:
                ledger.wake_readers()
            if len(to_ack) >= ACK_BATCH and ledger.ack_now is not None:
                ledger.ack_now.set()

        await ctx.deliver_many(messages, on_settled)

    async def _collect_pack(
        self,
        entry_id: str,
        fields: dict[bytes, bytes],
        messages: list[Message],
        owners: list[str],
        packs: dict[str, int],
    ) -> None:
        """:meth:`_deliver_pack` for :meth:`deliver_all`: a pack's messages join the batch
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
        self.ledger.settled(entry_id)

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

    async def deliver_one(self, entry_id: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        ctx = self.ctx
        limit = self.max_deliveries
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
        await ctx.deliver(message, partial(self.ledger.settled, entry_id))

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
                self.ledger.settled(entry_id)

        limit = self.max_deliveries
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
        self.ledger.dead_lettering(entry_id)
        self.stats.dead_lettered += 1
        settled = partial(self.ledger.settled, entry_id)
        await self.ctx.dead_letter(message, reason, error=error, on_settled=settled)
