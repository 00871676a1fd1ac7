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

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec

from .exceptions import DecodeError, EncodeError
from .plugin import Frame, Key, Message, Outgoing, make_lazy_message, make_message
from .validate import did_you_mean

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

# Bound methods looked up once: each frame saves two attribute lookups.
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode
# Parses (and so checks the syntax of) a JSON value without building it.
_json_check = msgspec.json.Decoder(msgspec.Raw).decode

#: Frames (or struct bodies) of this many bytes or more get a lazy body.
LAZY_FROM = 1024

_VALIDATE_DOC = (
    "Check a JSON body when the frame is decoded (an invalid one is a decode_error). "
    "false, for a trusted upstream: a large body is not checked until a handler reads it, "
    "and a body that fails then fails that handler (retries, then a handler_error "
    "dead letter with the raw frame)."
)

# What msgspec.json.decode raises on bad input: DecodeError (malformed, truncated,
# number out of range), UnicodeDecodeError (bad UTF-8 inside a string),
# UnicodeEncodeError (a str with a lone surrogate), RecursionError (deep nesting).
_JSON_ERRORS = (msgspec.DecodeError, UnicodeError, RecursionError)

# A route key must be one of these (bool is an int); anything else found there is None.
_SCALARS = (str, int, float)


#: What :func:`dotted_path` accepts, for the JSON Schema of the codecs' options.
DOTTED_PATH = r"^[^.]+(\.[^.]+)*$"


def dotted_path(path: str) -> tuple[str, ...]:
    """Split a dotted key path (``"data.channel"`` → ``("data", "channel")``) once, up front.

    Call it when building a codec, and pass the result to :func:`lookup_key` per
    message. ``ValueError`` for an empty path or an empty part (``"a..b"``).
    """
    parts = tuple(path.split("."))
    if not path or "" in parts:
        raise ValueError(f'invalid dotted path "{path}": it needs names separated by single dots')
    return parts


def lookup_key(obj: Any, parts: tuple[str, ...]) -> Key:
    """The route key found at ``parts`` (from :func:`dotted_path`) in a decoded JSON value.

    A str, int, float or bool found there is the key. A missing path, a value
    that is not an object on the way, or a non-scalar value at the end gives
    ``None`` (no key), never an error: frames without a key are still routable
    by routes that name no key.
    """
    for part in parts:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj if isinstance(obj, _SCALARS) else None


def _json_problem(exc: BaseException) -> str:
    """A short reason from a JSON decoder error; never the input itself."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeEncodeError):
        return "text contains a lone surrogate"
    text = str(exc).removeprefix("JSON is malformed: ")
    # msgspec < 0.23 raised UnicodeDecodeError here; 0.23 a DecodeError of its own words.
    if isinstance(exc, UnicodeDecodeError) or "utf-8" in text.lower():
        return "invalid UTF-8 in a string"
    return text[:1].lower() + text[1:120]


def _json_error(exc: BaseException, what: str = "invalid JSON") -> DecodeError:
    return DecodeError(f"{what}: {_json_problem(exc)}")


def _check_utf8(data: bytes | str, what: str) -> None:
    """msgspec skips strings it does not build without checking their UTF-8: check it."""
    if type(data) is bytes and not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what}: invalid UTF-8 in a string") from exc


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
        except _JSON_ERRORS as exc:
            raise _json_error(exc) from exc
        for _ in range(self._depth):
            if found is None:
                return True, None
            found = found.k
        return True, found if isinstance(found, _SCALARS) else None


def encode_outgoing(outgoing: Outgoing) -> bytes | str:
    """Build the frame for ``outgoing``, the way every built-in codec does.

    ``json`` alone → a text frame of compact JSON; ``struct`` (with or without
    ``json``) → a binary frame, ``struct.pack(format, *values)`` followed by the
    JSON body; ``text`` → a text frame; ``raw`` → a binary frame.
    :class:`~wsroute.EncodeError` for an invalid combination or a value that
    cannot be encoded.
    """
    # Outgoing.build sets has_json; a hand-built Outgoing(json=...) counts too.
    has_json = outgoing.has_json or outgoing.json is not None
    kinds = (has_json or outgoing.struct is not None) + (outgoing.text is not None)
    if kinds + (outgoing.raw is not None) != 1:
        raise EncodeError("give exactly one of json, struct (optionally with json), text or raw")
    if outgoing.text is not None:
        return outgoing.text
    if outgoing.raw is not None:
        return bytes(outgoing.raw)
    head = b""
    if outgoing.struct is not None:
        fmt, values = outgoing.struct
        try:
            head = struct.pack(fmt, *values)
        except (struct.error, TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot pack struct {fmt!r}: {exc}") from exc
        if not has_json:
            return head
    try:
        body = _json_encode(outgoing.json)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise EncodeError(f"cannot encode JSON: {exc}") from exc
    if outgoing.struct is not None:
        return head + body
    return body.decode()


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
        validate: bool = field(default=True, metadata={"doc": _VALIDATE_DOC})

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
                    _check_utf8(data, "invalid JSON")
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
            body = _json_decode(data)
        except _JSON_ERRORS as exc:
            raise _json_error(exc) from exc
        first = self._first
        if first is None:
            key = lookup_key(body, self._parts)
        elif type(body) is dict:
            key = body.get(first)
            if not isinstance(key, _SCALARS):
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
                body = _json_decode(data)
            except _JSON_ERRORS:
                return index
            key = body.get(first) if body.__class__ is dict else None
            if not (key is None or isinstance(key, _SCALARS)):
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
        return _json_decode(message.raw)
    except _JSON_ERRORS as exc:
        raise _json_error(exc) from exc


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
        validate: bool = field(default=True, metadata={"doc": _VALIDATE_DOC})

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
                    body = _json_decode(rest)
                except _JSON_ERRORS as exc:
                    raise _json_error(exc, "invalid JSON body") from exc
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
                body = _json_decode(rest)
            except (struct.error, *_JSON_ERRORS):
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
                _json_check(body_json)
            except _JSON_ERRORS as exc:
                raise _json_error(exc, "invalid JSON body") from exc
            _check_utf8(body_json, "invalid JSON body")
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
            return _json_decode(data)
        except _JSON_ERRORS as exc:
            raise _json_error(exc, "invalid JSON body") from exc

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
                body = _json_decode(data)
            except _JSON_ERRORS as exc:
                raise _json_error(exc) from exc
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
