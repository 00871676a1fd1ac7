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
    "encode_entry",
    "id_time",
    "pack_entry",
    "undecodable_message",
    "unpack_entry",
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


# -- decoding (the source) ---------------------------------------------------


def unpack_entry(fields: Mapping[bytes, bytes]) -> list[dict[bytes, bytes]]:
    """The per-frame fields of a packed entry (``kind = "pack"``); ``ValueError`` if malformed.

    Each item holds what an entry of one frame holds (``frame``, ``kind``,
    ``connection``, ``key``, ``seq``, ``received_at``), keyed by bytes as Redis
    returns an entry's fields.
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
    return [{name.encode(): value for name, value in f.items()} for f in frames]


def decode_frame(name: str, entry_id: str, fields: Mapping[bytes, bytes]) -> Frame:
    """The frame an entry carries, as connection ``name``'s; ``ValueError`` if malformed.

    ``seq`` defaults to 0 and ``received_at`` to the entry ID's time when the
    producer did not write them; ``kind = "text"`` makes the frame a text frame.
    """
    raw = fields.get(b"frame")
    if raw is None:
        raise ValueError("the entry has no frame field")
    data: bytes | str = raw
    if fields.get(b"kind") == KIND_TEXT.encode():
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"a text frame that is not UTF-8: {exc}") from exc
    raw_seq = fields.get(b"seq")
    raw_time = fields.get(b"received_at")
    try:
        seq = int(raw_seq) if raw_seq is not None else 0
        received_at = float(raw_time) if raw_time is not None else id_time(entry_id)
    except ValueError as exc:
        raise ValueError(f"seq or received_at is not a number: {exc}") from exc
    if not math.isfinite(received_at):
        raise ValueError(f"received_at is not a finite number: {received_at}")
    return Frame(name, data, seq, received_at)


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
    if fields.get(b"kind") == KIND_MESSAGE.encode():
        record = fields.get(b"frame")
        if record is None:
            raise ValueError("the entry has no frame field")
        message = parse_record(record).replace(connection=name)
    else:
        message = decode(decode_frame(name, entry_id, fields))
    message.fields = {**message.fields, **worker_fields(entry_id, fields)}
    if message.dead_letter is None and b"reason" in fields:
        message.dead_letter = decode_dead_letter(fields)
    return message


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
    return int(millis) / 1000 if millis.isdigit() else 0.0


def _float_or(value: bytes, default: float) -> float:
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) else default
