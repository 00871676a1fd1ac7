"""One connection's frames on their way to the routes: numbered, decoded, dispatched per read.

The transport's reader calls :meth:`ReadPath.handle` with the data frames of a
socket read, in order. It numbers them (``seq``, per connection from 1, never
reset by a reconnect), stamps them with one clock read (they arrived together),
decodes them — the built-in codecs in one loop (``decode_many``), any other
codec frame by frame — and dispatches them together. Synchronous and lean: it
returns an awaitable only when the reader must wait (a full ``block`` queue, the
memory budget, a frame to dead-letter), which finishes the frames after it.

Invariant: :attr:`ReadPath.seq` is the number of the last frame routed (or
dead-lettered): the one the reader waits on counts, the frames of the read after
it do not until they are routed, so at a stop every frame numbered is accounted
for by the handlers its routes name.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from .codec import JsonCodec, StructCodec
from .exceptions import DecodeError
from .plugin import Codec, Frame, Key, Message
from .wire import Data

if TYPE_CHECKING:
    from .connection import ConnectionStats

__all__ = ["Blocked", "Dispatch", "DispatchMany", "ReadPath"]

Dispatch = Callable[[Message], Awaitable[None] | None]
#: ``None``: all dispatched; else how many were, and what to await before the rest.
Blocked = tuple[int, Awaitable[None]]
DispatchMany = Callable[[list[Message]], Blocked | None]
#: Dead-letters an undecodable frame (logs it); awaited by the reader.
Undecodable = Callable[[Frame, DecodeError], Awaitable[None]]
#: Waits for what a dispatch returned, with the connection marked as held back.
Backpressure = Callable[[Awaitable[None]], Awaitable[None]]

# The built-in codecs decode a read's frames in one loop (``decode_many``).
_LOOPED = (JsonCodec, StructCodec)


class ReadPath:
    """A connection's per-read path; :meth:`handle` is the transport's frame handler."""

    def __init__(
        self,
        name: str,
        codec: Codec,
        dispatch_many: DispatchMany,
        undecodable: Undecodable,
        backpressure: Backpressure,
        stats: ConnectionStats,
    ) -> None:
        self.name = name
        self.stats = stats
        self.codec = codec
        self.dispatch_many = dispatch_many
        self.undecodable = undecodable
        self.backpressure = backpressure
        #: The number of the last frame routed (0 before the first).
        self.seq = 0
        #: An ``on_connect`` step's ``expect``: the key it waits for, set when it comes.
        self.expect: tuple[Key, anyio.Event] | None = None
        self._decode = codec.decode
        self._decode_many = codec.decode_many if isinstance(codec, _LOOPED) else None

    def handle(self, frames: list[Data]) -> Awaitable[None] | None:
        """Number, decode and dispatch a read's frames; an awaitable if the reader must wait."""
        name = self.name
        decode = self._decode
        decode_many = self._decode_many
        seq = self.seq
        self.stats.last_frame_at = received_at = time.time()
        messages: list[Message] = []
        end = len(frames)
        index = 0
        while index < end:
            if decode_many is not None:
                index = decode_many(name, frames, index, seq, received_at, messages)
                if index == end:
                    break
            frame = Frame(name, frames[index], seq + index + 1, received_at)
            index += 1
            try:
                messages.append(decode(frame))
            except Exception as exc:
                self.stats.decode_errors += 1
                if not isinstance(exc, DecodeError):  # a codec bug: dead-letter, go on
                    exc = DecodeError(f"codec raised {type(exc).__name__}: {exc}")
                return self._after_error(messages, frame, exc, frames[index:])
        return self._route(messages)

    def _route(self, messages: list[Message]) -> Awaitable[None] | None:
        if not messages:
            return None
        expect = self.expect
        if expect is not None:
            for message in messages:
                if message.key == expect[0]:
                    expect[1].set()
        blocked = self.dispatch_many(messages)
        if blocked is None:
            self.seq = messages[-1].seq
            return None
        return self._route_rest(messages, blocked)

    async def _route_rest(self, messages: list[Message], blocked: Blocked | None) -> None:
        # A full queue: the frames routed so far are read, and the one that waits
        # for room; the rest are read once it has room.
        while blocked is not None:
            count, pending = blocked
            self.seq = messages[count - 1].seq
            await self.backpressure(pending)
            messages = messages[count:]
            if not messages:
                return
            blocked = self.dispatch_many(messages)
        self.seq = messages[-1].seq

    async def _after_error(
        self, messages: list[Message], frame: Frame, error: DecodeError, rest: list[Data]
    ) -> None:
        """A read with an undecodable frame: the frames before it, its dead letter,
        then the frames after it."""
        pending = self._route(messages)
        if pending is not None:
            await pending
        self.seq = frame.seq
        await self.undecodable(frame, error)
        pending = self.handle(rest) if rest else None
        if pending is not None:
            await pending


def one_by_one(dispatch: Dispatch) -> DispatchMany:
    """A ``dispatch_many`` made of ``dispatch``: one message after the other."""

    def dispatch_many(messages: list[Message]) -> Blocked | None:
        for index, message in enumerate(messages):
            pending = dispatch(message)
            if pending is not None:
                return index + 1, pending
        return None

    return dispatch_many
