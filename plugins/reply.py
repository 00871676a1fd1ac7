"""The built-in ``reply`` handler: answer each message with a configured frame.

For protocols that want an acknowledgement or a pong per message, and as the
example of a handler that talks back through ``ctx.send``.
"""

from __future__ import annotations

import struct as _struct
from dataclasses import dataclass, field
from typing import Any

from wsroute import HandlerContext, Message, Outgoing, StructArg

__all__ = ["ReplyHandler", "StructFrame"]


@dataclass
class StructFrame:
    """``struct = { format = "<i", values = [2] }``: a packed binary header."""

    format: str = field(metadata={"doc": "A Python struct format string, e.g. `<i`."})
    values: list[Any] = field(
        default_factory=list, metadata={"doc": "Values packed with the format."}
    )

    def __post_init__(self) -> None:
        try:
            _struct.pack(self.format, *self.values)
        except _struct.error as exc:
            raise ValueError(
                f"struct: cannot pack {self.values!r} with format {self.format!r}: {exc}"
            ) from exc


class ReplyHandler:
    """Send a fixed frame upstream for every message it receives.

    The frame is written like an ``on_connect`` step: ``json`` (a text frame),
    ``struct`` with or without ``json`` (a binary frame), ``text`` or ``raw``
    (hex). It goes to the message's own connection unless ``connection`` names
    another.
    """

    @dataclass
    class Options:
        connection: str | None = field(
            default=None,
            metadata={"doc": "Send through this connection (default: the message's own)."},
        )
        json: Any = field(
            default=None,
            metadata={"doc": "A JSON value: alone a text frame, after struct the body."},
        )
        struct: StructFrame | None = field(
            default=None, metadata={"doc": "A packed binary header."}
        )
        text: str | None = field(default=None, metadata={"doc": "A text frame, sent as is."})
        raw: bytes | None = field(
            default=None, metadata={"doc": 'A binary frame written as hex: "02 00 00 00".'}
        )

        def __post_init__(self) -> None:
            self.outgoing()  # ValueError unless exactly one kind of frame is given

        def outgoing(self) -> Outgoing:
            """The frame these options describe."""
            return Outgoing.build(
                json=self.json, struct=self.struct_arg(), text=self.text, raw=self.raw
            )

        def struct_arg(self) -> StructArg | None:
            """``struct`` as the ``(format, values)`` pair ``ctx.send`` takes."""
            return None if self.struct is None else (self.struct.format, self.struct.values)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._struct = options.struct_arg()

    async def handle(self, message: Message) -> None:
        """Send the frame; a :class:`~wsroute.SendError` (not connected) fails the message."""
        options = self.options
        await self._ctx.send(
            options.connection or message.connection,
            json=options.json,
            struct=self._struct,
            text=options.text,
            raw=options.raw,
        )
