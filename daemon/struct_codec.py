"""The built-in ``struct`` codec: a packed binary header, then a body (see :mod:`wsroute.codec`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .codec_shared import (
    DOTTED_PATH,
    JSON_ERRORS,
    LAZY_FROM,
    VALIDATE_DOC,
    check_utf8,
    dotted_path,
    encode_outgoing,
    json_check,
    json_decode,
    json_error,
    lookup_key,
)
from .exceptions import DecodeError
from .plugin import Frame, Key, Message, Outgoing, make_lazy_message, make_message
from .validate import did_you_mean

__all__ = ["StructCodec"]


class _Layout:
    """What a StructCodec derives from its options: checked once, used per frame."""

    __slots__ = ("key_as_text", "key_index", "key_type", "names", "size", "struct", "text_parts")

    def __init__(self, options: StructCodec.Options) -> None:
        try:
            self.struct = struct.Struct(options.header)
        except (struct.error, TypeError) as exc:
            raise ValueError(f'header: invalid struct format "{options.header}"') from exc
        self.size = self.struct.size
        # Unpacking zeros tells how many values the format yields, and their types.
        zeros = self.struct.unpack(bytes(self.size))
        if options.fields:
            if len(options.fields) != len(zeros):
                given = len(options.fields)
                raise ValueError(
                    f'fields: header "{options.header}" unpacks {len(zeros)} '
                    f"value{'s' if len(zeros) != 1 else ''}, "
                    f"but {given} name{'s are' if given != 1 else ' is'} given"
                )
            seen: set[str] = set()
            for name in options.fields:
                if not name:
                    raise ValueError("fields: a field name must not be empty")
                if name in seen:
                    raise ValueError(f'fields: "{name}" is named twice')
                seen.add(name)
            self.names: tuple[str, ...] = tuple(options.fields)
        else:
            self.names = tuple(f"f{i}" for i in range(len(zeros)))
        if options.key is None:
            self.key_index = 0 if self.names else -1
        elif options.key in self.names:
            self.key_index = self.names.index(options.key)
        else:
            names = ", ".join(self.names) or "none"
            raise ValueError(
                f'key: "{options.key}" is not a header field (fields: {names})'
                + did_you_mean(options.key, self.names)
            )
        # A bytes field ("4s", "c") as route key is compared as text: see StructCodec.
        self.key_as_text = self.key_index >= 0 and isinstance(zeros[self.key_index], bytes)
        self.key_type: type | None = None
        if self.key_index >= 0:
            self.key_type = str if self.key_as_text else type(zeros[self.key_index])
        try:
            self.text_parts = dotted_path(options.text_key)
        except ValueError as exc:
            raise ValueError(f"text_key: {exc}") from None


class StructCodec:
    """Binary frames are a packed header followed by a body; text frames are JSON or text.

    A binary frame is unpacked with ``header`` (a :mod:`struct` format); the
    values become ``fields`` under their names, and the field named by ``key``
    is the route key. The rest of the frame is the body: decoded JSON (an
    empty rest gives ``None``), text, or bytes. A header field of a bytes
    format (``"8s"``, ``"c"``) used as the route key becomes a str, with its
    trailing NUL padding removed; in ``fields`` it stays bytes.

    Text frames on the same connection decode as JSON with the route key at
    ``text_key``, or as plain text without a key (``text = "text"``).
    """

    @dataclass
    class Options:
        """Options of the ``struct`` codec."""

        header: str = field(
            metadata={"doc": 'struct format of the binary frame header, e.g. "<i".'}
        )
        fields: list[str] = field(
            default_factory=list,
            metadata={"doc": "Names of the header values, one per value (default: f0, f1, ...)."},
        )
        body: Literal["json", "text", "bytes"] = field(
            default="json", metadata={"doc": "What follows the header: json | text | bytes."}
        )
        key: str | None = field(
            default=None,
            metadata={"doc": "The header field that is the route key (default: the first)."},
        )
        text: Literal["json", "text"] = field(
            default="json", metadata={"doc": "How text frames decode: json | text."}
        )
        text_key: str = field(
            default="type",
            metadata={
                "doc": "Dotted path of the route key in a JSON text frame.",
                "schema": {"pattern": DOTTED_PATH},
            },
        )
        validate: bool = field(default=True, metadata={"doc": VALIDATE_DOC})

        def __post_init__(self) -> None:
            _Layout(self)

    __slots__ = (
        "_body_json",
        "_body_text",
        "_build_bytes",
        "_build_json",
        "_key_as_text",
        "_key_index",
        "_key_type",
        "_names",
        "_single",
        "_size",
        "_text_json",
        "_text_parts",
        "_unpack_from",
        "_validate",
        "options",
    )

    def __init__(self, options: StructCodec.Options) -> None:
        self.options = options
        layout = _Layout(options)
        self._size = layout.size
        self._unpack_from = layout.struct.unpack_from
        self._names = layout.names
        self._key_index = layout.key_index
        self._key_as_text = layout.key_as_text
        self._key_type = layout.key_type
        self._single = layout.names[0] if len(layout.names) == 1 else None
        self._body_json = options.body == "json"
        self._body_text = options.body == "text"
        self._text_json = options.text == "json"
        self._text_parts = layout.text_parts
        self._validate = options.validate
        # Bound once: a lazy message holds one of these, not a closure per frame.
        self._build_json = self._json_body
        self._build_bytes = self._bytes_body

    def check_key(self, key: Key) -> str | None:
        """Why a route's ``key`` can never be a binary frame's key; ``None`` if it can.

        Read by ``wsroute check`` (a warning): ``key = "3"`` where the header
        field is an ``int32`` matches no binary frame.
        """
        wanted = self._key_type
        if wanted is None:
            return None
        if wanted is bool:
            fits = isinstance(key, bool)
        elif wanted is str:
            fits = isinstance(key, str)
        elif isinstance(key, bool) or not isinstance(key, int | float):
            fits = False
        else:  # numbers compare by value: 3 == 3.0
            fits = wanted is float or float(key).is_integer()
        if fits:
            return None
        kinds = {bool: "a boolean", str: "text", int: "an integer", float: "a number"}
        field_name = self._names[self._key_index]
        text = (
            f'; only a JSON text frame (key at "{self.options.text_key}") can have it'
            if self._text_json
            else ""
        )
        return (
            f'the key of a binary frame (header field "{field_name}") is {kinds[wanted]}, '
            f"so no binary frame has the key {key!r}{text}"
        )

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; :class:`~wsroute.DecodeError` if it does not fit the layout."""
        data = frame.data
        if isinstance(data, str):
            return self._decode_text(frame, data)
        size = self._size
        if len(data) < size:
            raise DecodeError(
                f"binary frame of {len(data)} byte{'s' if len(data) != 1 else ''} "
                f"is shorter than its {size}-byte header"
            )
        values = self._unpack_from(data)
        # One named field (an opcode) is the common layout: a dict display is ~5x
        # cheaper than dict(zip()). zip's strict= keyword alone costs ~100 ns per
        # call, and the lengths match by construction.
        single = self._single
        fields = {single: values[0]} if single is not None else dict(zip(self._names, values))  # noqa: B905
        index = self._key_index
        if index < 0:
            key = None
        elif self._key_as_text:
            key = self._text_key_of(cast(bytes, values[index]))
        else:
            key = values[index]
        rest_size = len(data) - size
        if self._body_json:
            if rest_size == 0:
                body = None
            elif rest_size >= LAZY_FROM:
                return self._lazy_json(frame, data, key, fields)
            else:
                rest = data[size:]
                try:
                    body = json_decode(rest)
                except JSON_ERRORS as exc:
                    raise json_error(exc, "invalid JSON body") from exc
                message = make_message(
                    frame.connection, key, body, fields, data, frame.seq, frame.received_at
                )
                message.body_json = rest
                return message
        elif self._body_text:
            try:
                body = data[size:].decode()
            except UnicodeDecodeError as exc:
                raise DecodeError(f"invalid UTF-8 in text body at byte {size + exc.start}") from exc
        elif rest_size >= LAZY_FROM:
            return make_lazy_message(
                frame.connection,
                key,
                self._build_bytes,
                None,
                fields,
                data,
                frame.seq,
                frame.received_at,
            )
        else:
            body = data[size:]
        return make_message(
            frame.connection,
            key,
            body,
            fields,
            data,
            frame.seq,
            frame.received_at,
        )

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
        until one is not a binary frame with a small JSON body; that one's index.

        The loop of a socket read, for the usual layout (``body = "json"``, the key
        a number): :meth:`decode` takes the frame it stops at (text, an empty or
        large body, an error), then this loop goes on after it.
        """
        if not self._body_json or self._key_as_text:
            return start
        size = self._size
        unpack = self._unpack_from
        single = self._single
        names = self._names
        index_of_key = self._key_index
        new = Message.__new__
        end = len(frames)
        for index in range(start, end):
            data = frames[index]
            if data.__class__ is not bytes or not size < len(data) < size + LAZY_FROM:
                return index
            try:
                values = unpack(data)
                rest = data[size:]
                body = json_decode(rest)
            except (struct.error, *JSON_ERRORS):
                return index
            message = new(Message)
            message.connection = connection
            message.key = values[index_of_key] if index_of_key >= 0 else None
            message.fields = {single: values[0]} if single is not None else dict(zip(names, values))  # noqa: B905
            message._body = body
            message._build = None
            message.body_json = rest
            message.raw = data
            message.seq = seq + index + 1
            message.received_at = received_at
            message.dead_letter = None
            out.append(message)
        return end

    def _lazy_json(self, frame: Frame, data: bytes, key: Key, fields: dict[str, Any]) -> Message:
        body_json: bytes | None = None
        if self._validate:
            body_json = data[self._size :]
            try:
                json_check(body_json)
            except JSON_ERRORS as exc:
                raise json_error(exc, "invalid JSON body") from exc
            check_utf8(body_json, "invalid JSON body")
        return make_lazy_message(
            frame.connection,
            key,
            self._build_json,
            body_json,
            fields,
            data,
            frame.seq,
            frame.received_at,
        )

    def _json_body(self, message: Message) -> Any:
        data = message.body_json
        if data is None:
            data = message.raw[self._size :]
        try:
            return json_decode(data)
        except JSON_ERRORS as exc:
            raise json_error(exc, "invalid JSON body") from exc

    def _bytes_body(self, message: Message) -> Any:
        return message.raw[self._size :]

    def _text_key_of(self, value: bytes) -> str:
        try:
            return value.rstrip(b"\0").decode()
        except UnicodeDecodeError as exc:
            field_name = self._names[self._key_index]
            raise DecodeError(f'invalid UTF-8 in key field "{field_name}"') from exc

    def _decode_text(self, frame: Frame, data: str) -> Message:
        if self._text_json:
            try:
                body = json_decode(data)
            except JSON_ERRORS as exc:
                raise json_error(exc) from exc
            key = lookup_key(body, self._text_parts)
        else:
            body, key = data, None
        return make_message(
            frame.connection,
            key,
            body,
            {},
            data,
            frame.seq,
            frame.received_at,
        )

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """See :func:`encode_outgoing`."""
        return encode_outgoing(outgoing)
