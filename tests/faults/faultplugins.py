"""Plugins for the fault suite, loaded by the daemon as ``faultplugins:Gated`` and so on.

:class:`Gated` records the ``seq`` of every message it handled and, while its
gate is closed, holds the message in ``handle()``: a handler that is exactly
as slow as the test wants, then fast.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import anyio

from wsroute import Duration, Frame, HandlerContext, Message, Outgoing


class Gated:
    """Wait for ``Gated.gates[name]`` (if set and not yet open), then record the seq."""

    gates: dict[str, anyio.Event] = {}
    seen: dict[str, list[int]] = defaultdict(list)
    calls: dict[str, int] = defaultdict(int)

    @dataclass
    class Options:
        delay: Duration = Duration(0.0)  # sleep per message, after the gate

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.name = ctx.name

    async def handle(self, message: Message) -> None:
        Gated.calls[self.name] += 1
        gate = Gated.gates.get(self.name)
        if gate is not None:
            await gate.wait()
        if self.options.delay:
            await anyio.sleep(self.options.delay)
        Gated.seen[self.name].append(message.seq)

    @classmethod
    def close(cls, name: str) -> anyio.Event:
        """Close ``name``'s gate; ``.set()`` the returned event to open it."""
        gate = cls.gates[name] = anyio.Event()
        return gate

    @classmethod
    def reset(cls) -> None:
        cls.gates.clear()
        cls.seen.clear()
        cls.calls.clear()


class BuggyCodec:
    """A third-party codec with a bug: JSON frames decode, but one with ``"boom"`` raises.

    The codec contract says ``decode`` raises only ``DecodeError``; this one
    breaks it (a ``KeyError``), as real plugins do.
    """

    @dataclass
    class Options:
        pass

    def __init__(self, options: Options) -> None:
        self.options = options

    def decode(self, frame: Frame) -> Message:
        body = json.loads(frame.data)
        if "boom" in body:
            raise KeyError("boom")  # not a DecodeError: a bug
        return Message(
            frame.connection,
            body.get("type"),
            body,
            raw=frame.data,
            seq=frame.seq,
            received_at=frame.received_at,
        )

    def encode(self, outgoing: Outgoing) -> bytes | str:
        return json.dumps(outgoing.json)
