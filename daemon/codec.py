"""The built-in codecs: frame ⇄ message, pure (no I/O, no event loop).

Every frame a connection reads goes through one codec's ``decode``, so that
method is the hot path of the daemon (100k+ frames/s): JSON is parsed with
msgspec, and everything that depends only on the options (the compiled
``struct.Struct``, the split dotted path, the header size) is computed once,
when the codec is built.

Contract shared by all codecs, and what the property tests and the fuzz target
check: ``decode`` raises :class:`~wsroute.DecodeError` and nothing else, for
any ``bytes`` or ``str``, with a short message that never repeats the frame;
``encode`` raises :class:`~wsroute.EncodeError` and nothing else.

Built-ins, registered as entry points in the ``wsroute.codecs`` group:

- ``json`` (:class:`JsonCodec`): the frame is one JSON value; the route key is
  found by a dotted path.
- ``struct`` (:class:`StructCodec`): a binary frame is a packed header followed
  by a body (JSON, text or bytes); the route key is one header field.
- ``text`` (:class:`TextCodec`) and ``bytes`` (:class:`BytesCodec`): the frame
  as it is, no route key.

Lazy bodies: routing needs the key, not the body. For a frame of
:data:`LAZY_FROM` bytes or more, ``json`` and ``struct`` read the key (``json``
through a msgspec ``Struct`` that has only the key's field, which parses and so
checks the whole frame without building it; ``struct`` from the header) and
leave the body to be built on the first read of ``message.body``. With
``validate = true`` (the default) the JSON body is still checked here, so an
invalid one is a ``DecodeError`` as before; ``validate = false`` skips the
check (a trusted upstream), and a body that then fails to build fails the
handler that reads it. Smaller frames are decoded at once: deferring costs
more than building a small body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .codec_shared import (
    DOTTED_PATH,
    JSON_ERRORS,
    LAZY_FROM,
    SCALARS,
    VALIDATE_DOC,
    check_utf8,
    dotted_path,
    encode_outgoing,
    json_decode,
    json_error,
    lookup_key,
)
from .exceptions import DecodeError
from .plugin import Frame, Key, Message, Outgoing, make_lazy_message, make_message
from .struct_codec import StructCodec

__all__ = [
    "LAZY_FROM",
    "BytesCodec",
    "JsonCodec",
    "StructCodec",
    "TextCodec",
    "dotted_path",
    "encode_outgoing",
    "lookup_key",
]


class _KeyReader:
    """Reads the value at a dotted path of a JSON object without building the rest.

    A msgspec ``Struct`` per level with only the path's field: decoding into it
    parses the whole frame (so its syntax is checked) and builds only the key.
    """

    __slots__ = ("_decode", "_depth")

    def __init__(self, parts: tuple[str, ...]) -> None:
        inner: Any = Any
        for depth, part in enumerate(reversed(parts)):
            inner = msgspec.defstruct(
                f"_Key{depth}", [("k", inner | None if depth else Any, None)], rename={"k": part}
            )
        self._decode = msgspec.json.Decoder(inner).decode
        self._depth = len(parts)

    def read(self, data: bytes | str) -> tuple[bool, Key]:
        """``(True, key)``, or ``(False, None)`` when the shape is not objects down the path
        (then decode it whole); :class:`~wsroute.DecodeError` for invalid JSON."""
        try:
            found: Any = self._decode(data)
        except msgspec.ValidationError:
            return False, None
        except JSON_ERRORS as exc:
            raise json_error(exc) from exc
        for _ in range(self._depth):
            if found is None:
                return True, None
            found = found.k
        return True, found if isinstance(found, SCALARS) else None


class JsonCodec:
    """Each frame is one JSON value; the route key is read at a dotted path.

    Text and binary frames alike are decoded as UTF-8 JSON. The message's
    ``body`` is the decoded value and ``fields`` is empty.
    """

    @dataclass
    class Options:
        """Options of the ``json`` codec."""

        key: str = field(
            default="type",
            metadata={
                "doc": 'Dotted path of the route key in the JSON object: "type", "data.channel".',
                "schema": {"pattern": DOTTED_PATH},
            },
        )
        validate: bool = field(default=True, metadata={"doc": VALIDATE_DOC})

        def __post_init__(self) -> None:
            try:
                dotted_path(self.key)
            except ValueError as exc:
                raise ValueError(f"key: {exc}") from None

    __slots__ = ("_build", "_first", "_keys", "_parts", "_validate", "options")

    def __init__(self, options: JsonCodec.Options | None = None) -> None:
        self.options = JsonCodec.Options() if options is None else options
        self._parts = dotted_path(self.options.key)
        # The common case, a top-level key, skips the generic loop.
        self._first = self._parts[0] if len(self._parts) == 1 else None
        self._keys = _KeyReader(self._parts)
        self._validate = self.options.validate
        self._build = _build_json

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; :class:`~wsroute.DecodeError` if it is not JSON."""
        data = frame.data
        if len(data) >= LAZY_FROM:
            shaped, key = self._keys.read(data)
            if shaped:
                if self._validate:
                    check_utf8(data, "invalid JSON")
                return make_lazy_message(
                    frame.connection,
                    key,
                    self._build,
                    data if self._validate else None,
                    {},
                    data,
                    frame.seq,
                    frame.received_at,
                )
        try:
            body = json_decode(data)
        except JSON_ERRORS as exc:
            raise json_error(exc) from exc
        first = self._first
        if first is None:
            key = lookup_key(body, self._parts)
        elif type(body) is dict:
            key = body.get(first)
            if not isinstance(key, SCALARS):
                key = None
        else:
            key = None
        message = make_message(frame.connection, key, body, {}, data, frame.seq, frame.received_at)
        message.body_json = data
        return message

    def decode_many(
        self,
        connection: str,
        frames: Sequence[bytes | str],
        start: int,
        seq: int,
        received_at: float,
        out: list[Message],
    ) -> int:
        """Decode ``frames[start:]`` into ``out`` (frame ``i`` numbered ``seq + i + 1``)
        until one is not a small JSON object with a top-level key; that one's index.

        The loop of a socket read: :meth:`decode` takes the frame it stops at
        (a large frame, a dotted key, an error), then this loop goes on after it.
        """
        first = self._first
        if first is None:
            return start
        new = Message.__new__
        end = len(frames)
        for index in range(start, end):
            data = frames[index]
            if len(data) >= LAZY_FROM:
                return index
            try:
                body = json_decode(data)
            except JSON_ERRORS:
                return index
            key = body.get(first) if body.__class__ is dict else None
            if not (key is None or isinstance(key, SCALARS)):
                key = None
            # make_message(), inlined: once per frame.
            message = new(Message)
            message.connection = connection
            message.key = key
            message.fields = {}
            message._body = body
            message._build = None
            message.body_json = data
            message.raw = data
            message.seq = seq + index + 1
            message.received_at = received_at
            message.dead_letter = None
            out.append(message)
        return end

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """See :func:`encode_outgoing`."""
        return encode_outgoing(outgoing)


def _build_json(message: Message) -> Any:
    """A ``json`` codec's lazy body: the whole frame."""
    try:
        return json_decode(message.raw)
    except JSON_ERRORS as exc:
        raise json_error(exc) from exc


class TextCodec:
    """The body is the frame's text; a binary frame must be valid UTF-8. No route key."""

    @dataclass
    class Options:
        """The ``text`` codec has no options."""

    __slots__ = ("options",)

    def __init__(self, options: TextCodec.Options | None = None) -> None:
        self.options = TextCodec.Options() if options is None else options

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; :class:`~wsroute.DecodeError` for a binary frame that is not UTF-8."""
        data = frame.data
        if isinstance(data, str):
            body = data
        else:
            try:
                body = data.decode()
            except UnicodeDecodeError as exc:
                raise DecodeError(f"invalid UTF-8 in binary frame at byte {exc.start}") from exc
        return make_message(
            frame.connection,
            None,
            body,
            {},
            data,
            frame.seq,
            frame.received_at,
        )

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """See :func:`encode_outgoing`."""
        return encode_outgoing(outgoing)


class BytesCodec:
    """The body is the frame's bytes; a text frame becomes its UTF-8 bytes. No route key."""

    @dataclass
    class Options:
        """The ``bytes`` codec has no options."""

    __slots__ = ("options",)

    def __init__(self, options: BytesCodec.Options | None = None) -> None:
        self.options = BytesCodec.Options() if options is None else options

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; only a text frame with a lone surrogate fails."""
        data = frame.data
        if isinstance(data, str):
            try:
                body = data.encode()
            except UnicodeEncodeError as exc:
                # Cannot come from the network (websockets checks UTF-8), only from Python.
                raise DecodeError(
                    f"text frame contains a lone surrogate at index {exc.start}"
                ) from exc
        else:
            body = data
        return make_message(
            frame.connection,
            None,
            body,
            {},
            data,
            frame.seq,
            frame.received_at,
        )

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """See :func:`encode_outgoing`."""
        return encode_outgoing(outgoing)
