"""The ``msgpack`` codec: one MessagePack value per binary frame.

A codec is pure — bytes in, a :class:`~wsroute.Message` out, and back — so
it is tested without a network, and it raises :class:`~wsroute.DecodeError`
(only) for a frame it cannot read: the daemon then dead-letters the raw frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from wsroute import DecodeError, EncodeError, Frame, Key, Message, Outgoing, encode_outgoing

__all__ = ["MsgpackCodec"]

_SCALARS = (str, int, float, bool)


class MsgpackCodec:
    """Each binary frame is one MessagePack value; the route key is read at a dotted path.

    Outgoing ``json`` values are sent as MessagePack binary frames too (after
    the packed ``struct`` header, when there is one); ``text`` and ``raw`` go
    out as they are.
    """

    @dataclass
    class Options:
        key: str = field(
            default="type",
            metadata={"doc": 'Dotted path of the route key in a map: "type", "data.channel".'},
        )

        def __post_init__(self) -> None:
            if not all(self.key.split(".")):
                raise ValueError(f"key: not a dotted path: {self.key!r}")

    def __init__(self, options: Options | None = None) -> None:
        self.options = MsgpackCodec.Options() if options is None else options
        self._path = self.options.key.split(".")
        self._decoder = msgspec.msgpack.Decoder()
        self._encoder = msgspec.msgpack.Encoder()

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; :class:`~wsroute.DecodeError` for text or invalid MessagePack."""
        data = frame.data
        if isinstance(data, str):
            raise DecodeError("a text frame: MessagePack frames are binary")
        try:
            body = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"invalid MessagePack: {exc}") from None
        return Message(
            frame.connection,
            self._key(body),
            body,
            raw=data,
            seq=frame.seq,
            received_at=frame.received_at,
        )

    def _key(self, body: Any) -> Key:
        value = body
        for part in self._path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value if isinstance(value, _SCALARS) else None

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """Build the frame for ``outgoing``; :class:`~wsroute.EncodeError` if impossible.

        ``text``, ``raw`` and a ``struct`` header alone are encoded by wsroute's
        :func:`~wsroute.encode_outgoing`, as the built-in codecs do; only a ``json``
        body is this codec's own: MessagePack instead of JSON.
        """
        if not (outgoing.has_json or outgoing.json is not None):
            return encode_outgoing(outgoing)
        head = b""
        if outgoing.struct is not None:
            packed = encode_outgoing(Outgoing(struct=outgoing.struct))
            assert isinstance(packed, bytes)  # a struct header is a binary frame
            head = packed
        elif outgoing.text is not None or outgoing.raw is not None:
            return encode_outgoing(outgoing)  # an invalid combination: its EncodeError
        try:
            return head + self._encoder.encode(outgoing.json)
        except (TypeError, msgspec.EncodeError) as exc:
            raise EncodeError(f"cannot encode as MessagePack: {exc}") from None
