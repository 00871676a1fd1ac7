"""The stream-entry format: what the ``redis`` sink writes and the ``redis-stream`` source reads.

This module is the one place the format lives; the sink encodes with it and the
source decodes with it (docs/scale-out.md, "Entry fields", documents it for
other producers and consumers). An entry is a flat map of field names to byte
strings (Redis stores every value as bytes; the encoder hands it ``str`` for
text, which redis-py sends as UTF-8):

- ``frame``: the raw frame, byte for byte; a text frame as its UTF-8 bytes with
  ``kind = "text"``; a binary frame has no ``kind``;
- ``connection`` (the ingest connection's name), ``key`` (the route key as
  JSON), ``seq`` (decimal), ``received_at`` (Unix seconds, as ``repr(float)``,
  so it reads back as the same float);
- a message with no raw frame (a ``$connected``/``$disconnected`` lifecycle
  message, one a handler emitted, one replayed from a ``jsonl`` file, or an
  empty frame) has ``kind = "message"`` and its whole ``jsonl`` record as JSON
  in ``frame``: a worker rebuilds it with :func:`wsroute.records.parse_record`
  instead of a codec;
- a dead letter adds ``reason``, ``handler``, ``error`` and ``attempts``;
- a packed entry (the sink's ``pack``) is ``kind = "pack"``, ``count``
  (decimal) and ``frames``: a msgpack array holding each frame's fields above
  as a map from field name to byte string (:func:`pack_entry`,
  :func:`unpack_entry`).

Invariants:

- :func:`decode_frame` of :func:`encode_entry` gives back the frame's data
  (``str`` for text, ``bytes`` for binary), ``seq`` and ``received_at`` exactly;
  :func:`decode_message` of a ``kind = "message"`` entry gives back the record's
  message. Packing is transparent: :func:`unpack_entry` of :func:`pack_entry`
  returns each frame's fields, as Redis returns them, in order.
- The fast twins write and read the same entries: :func:`encode_entry_bytes`
  is :func:`encode_entry` with every value as bytes, :func:`pack_entry_bytes`
  is :func:`pack_entry` of those, :func:`pack_messages` is
  :func:`pack_entry_bytes` of a message list's :func:`encode_entry_bytes`, and
  :func:`decode_packed_message` of an item of :func:`unpack_frames` is
  :func:`decode_message` of the same item of :func:`unpack_entry`.
- Decoding is lenient with other producers: only ``frame`` is required;
  ``seq`` defaults to 0 and ``received_at`` to the time in the entry ID.
  A malformed entry raises ``ValueError`` (or the codec's ``DecodeError``),
  never anything else, so the source can dead-letter it
  (:func:`undecodable_message`).
- Decoded messages carry the source's connection name; ``fields`` gain
  ``stream_id`` (the entry ID) and ``source_connection`` (the entry's
  ``connection``) — :func:`worker_fields`.

Pure functions only: no Redis client, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from wsroute import DeadLetter, Frame, Message
from wsroute.records import encode_record, parse_record

__all__ = [
    "KIND_MESSAGE",
    "KIND_PACK",
    "KIND_TEXT",
    "decode_dead_letter",
    "decode_frame",
    "decode_message",
    "decode_packed_message",
    "encode_entry",
    "encode_entry_bytes",
    "id_time",
    "pack_entry",
    "pack_entry_bytes",
    "pack_messages",
    "undecodable_message",
    "unpack_entry",
    "unpack_frames",
    "worker_fields",
]

#: ``kind`` of a text frame's entry (a binary frame's entry has no ``kind``).
KIND_TEXT = "text"
#: ``kind`` of an entry holding a ``jsonl`` record instead of a raw frame.
KIND_MESSAGE = "message"
#: ``kind`` of an entry holding several frames (the sink's ``pack``).
KIND_PACK = "pack"

_key_encoder = msgspec.json.Encoder()
_pack_encoder = msgspec.msgpack.Encoder()
_pack_decoder = msgspec.msgpack.Decoder(list[dict[str, bytes]])
_float_decoder = msgspec.json.Decoder(float)
_float_encoder = msgspec.json.Encoder()

# -- encoding (the sink) -----------------------------------------------------


def encode_entry(message: Message) -> dict[str, str | bytes]:
    """The fields of the stream entry written for ``message`` (see the module documentation)."""
    raw = message.raw
    fields: dict[str, str | bytes]
    if isinstance(raw, str) and raw:
        fields = {"frame": raw.encode(), "kind": KIND_TEXT}
    elif raw:
        fields = {"frame": bytes(raw)}
    else:
        fields = {"frame": encode_record(message)[:-1], "kind": KIND_MESSAGE}
    fields["connection"] = message.connection
    fields["key"] = _key_encoder.encode(message.key).decode()
    fields["seq"] = str(message.seq)
    fields["received_at"] = repr(float(message.received_at))
    dead = message.dead_letter
    if dead is not None:
        fields["reason"] = dead.reason
        fields["handler"] = dead.handler or ""
        fields["error"] = dead.error or ""
        fields["attempts"] = str(dead.attempts)
    return fields


def pack_entry(frames: Sequence[Mapping[str, str | bytes]]) -> dict[str, str | bytes]:
    """One entry carrying several frames' fields: ``kind = "pack"``, ``count``, ``frames``.

    ``frames`` is a msgpack array of maps, one per frame, from field name to the
    field's bytes (text values UTF-8 encoded), in the order given.
    """
    items = [
        {name: value.encode() if isinstance(value, str) else value for name, value in f.items()}
        for f in frames
    ]
    return {"kind": KIND_PACK, "count": str(len(items)), "frames": _pack_encoder.encode(items)}


def encode_entry_bytes(message: Message) -> dict[str, bytes]:
    """:func:`encode_entry` with every value the bytes Redis stores: the sink's fast path.

    Its result goes to :func:`pack_entry_bytes` (or to ``XADD``) with nothing
    left to convert.
    """
    raw = message.raw
    if not raw or message.dead_letter is not None:
        return {
            name: value.encode() if isinstance(value, str) else value
            for name, value in encode_entry(message).items()
        }
    received_at = float(message.received_at)
    # repr(float) costs ~0.45 µs; msgspec writes the same text (shortest round trip)
    # for every float in this range in ~0.05 µs (outside it, it may spell an exponent
    # differently: "1e-7", not "1e-07").
    when = (
        _float_encoder.encode(received_at)
        if 1.0 <= received_at < 1e15
        else repr(received_at).encode()
    )
    connection = _connection_names.get(message.connection)
    if connection is None:
        connection = _connection_name(message.connection)
    if raw.__class__ is bytes:
        return {
            "frame": raw,
            "connection": connection,
            "key": _key_encoder.encode(message.key),
            "seq": b"%d" % message.seq,
            "received_at": when,
        }
    if isinstance(raw, str):
        return {
            "frame": raw.encode(),
            "kind": _KIND_TEXT,
            "connection": connection,
            "key": _key_encoder.encode(message.key),
            "seq": b"%d" % message.seq,
            "received_at": when,
        }
    return {
        "frame": bytes(raw),
        "connection": connection,
        "key": _key_encoder.encode(message.key),
        "seq": b"%d" % message.seq,
        "received_at": when,
    }


# Connection names as bytes, by name: a daemon has a handful of connections.
_connection_names: dict[str, bytes] = {}


def _connection_name(name: str) -> bytes:
    encoded = name.encode()
    if len(_connection_names) < 1000:
        _connection_names[name] = encoded
    return encoded


def pack_entry_bytes(frames: list[dict[str, bytes]]) -> dict[str, bytes]:
    """:func:`pack_entry` of :func:`encode_entry_bytes` results, values as bytes."""
    return {
        "kind": _KIND_PACK,
        "count": b"%d" % len(frames),
        "frames": _pack_encoder.encode(frames),
    }


def pack_messages(messages: Sequence[Message]) -> dict[str, bytes]:
    """``pack_entry_bytes([encode_entry_bytes(m) for m in messages])``, the same bytes.

    The sink's path for ``pack``: a binary frame (the usual message) goes into
    the msgpack array as a struct that msgspec writes as the same map, without
    a dict per frame; any other message through :func:`encode_entry_bytes`.
    """
    frames: list[Any] = []
    add = frames.append
    names = _connection_names
    encode_key = _key_encoder.encode
    encode_float = _float_encoder.encode
    for message in messages:
        raw = message.raw
        if raw.__class__ is not bytes or not raw or message.dead_letter is not None:
            add(encode_entry_bytes(message))
            continue
        connection = names.get(message.connection)
        if connection is None:
            connection = _connection_name(message.connection)
        received_at = float(message.received_at)
        add(
            _BinaryFrame(
                raw,
                connection,
                encode_key(message.key),
                b"%d" % message.seq,
                encode_float(received_at)
                if 1.0 <= received_at < 1e15
                else repr(received_at).encode(),
            )
        )
    return {
        "kind": _KIND_PACK,
        "count": b"%d" % len(frames),
        "frames": _pack_encoder.encode(frames),
    }


class _BinaryFrame(msgspec.Struct):
    """A binary frame's map in a pack, as :func:`encode_entry_bytes` builds it (same order)."""

    frame: bytes
    connection: bytes
    key: bytes
    seq: bytes
    received_at: bytes


_KIND_TEXT = KIND_TEXT.encode()
_KIND_MESSAGE = KIND_MESSAGE.encode()
_KIND_PACK = KIND_PACK.encode()


# -- decoding (the source) ---------------------------------------------------


def unpack_entry(fields: Mapping[bytes, bytes]) -> list[dict[bytes, bytes]]:
    """The per-frame fields of a packed entry (``kind = "pack"``); ``ValueError`` if malformed.

    Each item holds what an entry of one frame holds (``frame``, ``kind``,
    ``connection``, ``key``, ``seq``, ``received_at``), keyed by bytes as Redis
    returns an entry's fields.
    """
    return [{name.encode(): value for name, value in f.items()} for f in unpack_frames(fields)]


def unpack_frames(fields: Mapping[bytes, bytes]) -> list[dict[str, bytes]]:
    """:func:`unpack_entry` with the field names as stored in the pack (``str``).

    For :func:`decode_packed_message`: the worker's path, which skips converting
    every name of every frame.
    """
    blob = fields.get(b"frames")
    if blob is None:
        raise ValueError("a packed entry without a frames field")
    try:
        frames = _pack_decoder.decode(blob)
    except msgspec.MsgspecError as exc:
        raise ValueError(f"the frames field is not a msgpack array of maps: {exc}") from exc
    if not frames:
        raise ValueError("a packed entry without frames")
    return frames


def decode_frame(name: str, entry_id: str, fields: Mapping[bytes, bytes]) -> Frame:
    """The frame an entry carries, as connection ``name``'s; ``ValueError`` if malformed.

    ``seq`` defaults to 0 and ``received_at`` to the entry ID's time when the
    producer did not write them; ``kind = "text"`` makes the frame a text frame.
    """
    return _decode_frame(name, entry_id, fields, _BYTE_NAMES)


def decode_message(
    name: str,
    entry_id: str,
    fields: Mapping[bytes, bytes],
    decode: Callable[[Frame], Message],
) -> Message:
    """The message an entry of one frame carries; ``ValueError`` or ``DecodeError`` if unreadable.

    A frame goes through ``decode`` (the source's codec). An entry of
    ``kind = "message"`` holds a ``jsonl`` record and is rebuilt from it. Either
    way ``connection`` becomes ``name``, ``fields`` gain :func:`worker_fields`,
    and an entry written as a dead letter (``reason`` ...) keeps its
    :class:`~wsroute.DeadLetter`.
    """
    return _decode_message(name, entry_id, fields, decode, _BYTE_NAMES)


def decode_packed_message(
    name: str,
    entry_id: str,
    frame: Mapping[str, bytes],
    decode: Callable[[Frame], Message],
) -> Message:
    """:func:`decode_message` of one item of :func:`unpack_frames` (its names are ``str``).

    The same as ``decode_message(name, entry_id, item, decode)`` for the item
    :func:`unpack_entry` returns, without converting the names first.
    """
    return _decode_message(name, entry_id, frame, decode, _TEXT_NAMES)


# The field names an entry's fields are looked up by: bytes (Redis), or str (a pack's
# items): frame, kind, seq, received_at, connection, reason.
_Names = tuple[Any, Any, Any, Any, Any, Any]
_BYTE_NAMES: _Names = (b"frame", b"kind", b"seq", b"received_at", b"connection", b"reason")
_TEXT_NAMES: _Names = ("frame", "kind", "seq", "received_at", "connection", "reason")


def _decode_frame(name: str, entry_id: str, fields: Mapping[Any, bytes], names: _Names) -> Frame:
    get = fields.get
    frame_name, kind_name, seq_name, time_name, _, _ = names
    raw = get(frame_name)
    if raw is None:
        raise ValueError("the entry has no frame field")
    data: bytes | str = raw
    if get(kind_name) == _KIND_TEXT:
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"a text frame that is not UTF-8: {exc}") from exc
    raw_seq = get(seq_name)
    raw_time = get(time_name)
    try:
        seq = int(raw_seq) if raw_seq is not None else 0
        if raw_time is None:
            received_at = id_time(entry_id)
        else:
            try:  # a quarter of float()'s time for the decimal numbers the sink writes
                received_at = _float_decoder.decode(raw_time)
            except msgspec.DecodeError:
                received_at = float(raw_time)  # other spellings float() takes, or ValueError
    except ValueError as exc:
        raise ValueError(f"seq or received_at is not a number: {exc}") from exc
    if not math.isfinite(received_at):
        raise ValueError(f"received_at is not a finite number: {received_at}")
    return Frame(name, data, seq, received_at)


def _decode_message(
    name: str,
    entry_id: str,
    fields: Mapping[Any, bytes],
    decode: Callable[[Frame], Message],
    names: _Names,
) -> Message:
    frame_name, kind_name, _, _, connection_name, reason_name = names
    kind = fields.get(kind_name)
    if kind is None or kind == _KIND_TEXT:
        # A frame as the sink writes it: _decode_frame(), inlined, as this runs once
        # per message; anything unusual (a field missing, another spelling, an
        # error) goes the long way, which raises the right error.
        raw = fields.get(frame_name)
        raw_seq = fields.get(names[2])
        raw_time = fields.get(names[3])
        try:
            if raw is None or raw_seq is None or raw_time is None:
                raise ValueError
            data: bytes | str = raw if kind is None else raw.decode("utf-8")
            seq = int(raw_seq)
            received_at = _float_decoder.decode(raw_time)
        except (ValueError, msgspec.DecodeError):  # UnicodeDecodeError is a ValueError
            message = decode(_decode_frame(name, entry_id, fields, names))
        else:
            if not math.isfinite(received_at):
                raise ValueError(f"received_at is not a finite number: {received_at}")
            message = decode(Frame(name, data, seq, received_at))
    elif kind == _KIND_MESSAGE:
        record = fields.get(frame_name)
        if record is None:
            raise ValueError("the entry has no frame field")
        message = parse_record(record).replace(connection=name)
    else:
        message = decode(_decode_frame(name, entry_id, fields, names))
    # worker_fields(), inlined: this runs once per message a worker handles.
    own = message.fields
    extra = {**own, "stream_id": entry_id} if own else {"stream_id": entry_id}
    connection = fields.get(connection_name)
    if connection is not None:
        text = _connection_texts.get(connection)
        if text is None:
            text = connection.decode("utf-8", "replace")
            if len(_connection_texts) < 1000:
                _connection_texts[connection] = text
        extra["source_connection"] = text
    message.fields = extra
    if reason_name in fields and message.dead_letter is None:
        if names is _TEXT_NAMES:
            fields = {key.encode(): value for key, value in fields.items()}
        message.dead_letter = decode_dead_letter(fields)
    return message


# An entry's connection field as text, by its bytes: an ingest has a handful of them.
_connection_texts: dict[bytes, str] = {}


def decode_dead_letter(fields: Mapping[bytes, bytes]) -> DeadLetter:
    """The :class:`~wsroute.DeadLetter` of an entry the sink wrote as a dead-letter handler."""

    def text(field: bytes) -> str | None:
        value = fields.get(field)
        return value.decode("utf-8", "replace") if value else None

    attempts = fields.get(b"attempts", b"")
    return DeadLetter(
        reason=text(b"reason") or "",
        handler=text(b"handler"),
        error=text(b"error"),
        attempts=int(attempts) if attempts.isdigit() else 0,
    )


def worker_fields(entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """What a worker adds to ``Message.fields``: ``stream_id``, and ``source_connection``."""
    out: dict[str, Any] = {"stream_id": entry_id}
    connection = fields.get(b"connection")
    if connection is not None:
        out["source_connection"] = connection.decode("utf-8", "replace")
    return out


def undecodable_message(name: str, entry_id: str, fields: Mapping[bytes, bytes]) -> Message:
    """An undecodable entry as a dead letter: body and ``raw`` are its ``frame`` as stored."""
    data = fields.get(b"frame", b"")
    seq = fields.get(b"seq", b"")
    received = fields.get(b"received_at", b"")
    return Message(
        name,
        None,
        data,
        fields=worker_fields(entry_id, fields),
        raw=data,
        seq=int(seq) if seq.isdigit() else 0,
        received_at=_float_or(received, id_time(entry_id)),
    )


def id_time(entry_id: str) -> float:
    """The Unix time in an entry ID (``<milliseconds>-<n>``); 0.0 for other IDs."""
    millis, _, _ = entry_id.partition("-")
    return int(millis) / 1000 if millis.isascii() and millis.isdigit() else 0.0


def _float_or(value: bytes, default: float) -> float:
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) else default
