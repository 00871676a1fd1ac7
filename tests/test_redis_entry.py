"""The stream-entry format of wsroute.plugins.redis.entry: written by the sink, read by the source.

Pure functions, no Redis: an entry "as stored" is the encoder's fields the way
Redis hands them back (names and values as bytes). Round trips are properties
over generated messages; malformed entries must fail with ``ValueError`` only.
"""

from __future__ import annotations

import contextlib
import json
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsroute import DeadLetter, DecodeError, Frame, Message
from wsroute.plugins.redis.entry import (
    KIND_MESSAGE,
    KIND_PACK,
    KIND_TEXT,
    decode_frame,
    decode_message,
    decode_packed_message,
    encode_entry,
    encode_entry_bytes,
    id_time,
    pack_entry,
    pack_entry_bytes,
    undecodable_message,
    unpack_entry,
    unpack_frames,
    worker_fields,
)

ROUND_TRIP = settings(max_examples=200, deadline=None)
ENTRY_ID = "1700000000123-7"
SOURCE = "workers"

int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
keys = st.none() | st.booleans() | int64 | finite | st.text(max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | finite | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
raw_frames = st.text(min_size=1) | st.binary(min_size=1)
dead_letters = st.none() | st.builds(
    DeadLetter,
    reason=st.sampled_from(["handler_error", "timeout", "shutdown", "max_deliveries"]),
    handler=st.none() | st.text(min_size=1, max_size=10),
    error=st.none() | st.text(min_size=1, max_size=30),
    attempts=st.integers(0, 100),
)


def as_stored(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    """The fields as Redis returns them: every name and value as bytes (text as UTF-8)."""
    return {
        name.encode(): value.encode() if isinstance(value, str) else value
        for name, value in fields.items()
    }


def frame_decoder(frame: Frame) -> Message:
    """A codec that keeps the frame as it is: body and raw are the frame's data."""
    return Message(
        frame.connection,
        None,
        frame.data,
        raw=frame.data,
        seq=frame.seq,
        received_at=frame.received_at,
    )


@st.composite
def frame_messages(draw: st.DrawFn) -> Message:
    return Message(
        draw(st.text(max_size=10)),
        draw(keys),
        None,
        raw=draw(raw_frames),
        seq=draw(int64),
        received_at=draw(finite),
        dead_letter=draw(dead_letters),
    )


@st.composite
def record_messages(draw: st.DrawFn) -> Message:
    """A message with no raw frame (lifecycle, emitted, replayed): written as its record."""
    return Message(
        draw(st.text(max_size=10)),
        draw(keys),
        draw(json_values | st.binary()),
        fields=draw(st.dictionaries(st.text(max_size=8).map("f_".__add__), json_values)),
        seq=draw(int64),
        received_at=draw(finite),
        dead_letter=draw(dead_letters),
    )


# -- round trips -------------------------------------------------------------


@ROUND_TRIP
@given(frame_messages())
def test_a_frame_comes_back_byte_for_byte(message: Message) -> None:
    fields = encode_entry(message)
    assert fields.get("kind") == (KIND_TEXT if isinstance(message.raw, str) else None)
    assert json.loads(fields["key"]) == message.key
    stored = as_stored(fields)

    frame = decode_frame(SOURCE, ENTRY_ID, stored)
    assert type(frame.data) is type(message.raw)
    assert frame.data == message.raw
    assert (frame.connection, frame.seq, frame.received_at) == (
        SOURCE,
        message.seq,
        message.received_at,
    )

    decoded = decode_message(SOURCE, ENTRY_ID, stored, frame_decoder)
    assert decoded.connection == SOURCE
    assert decoded.raw == message.raw
    assert decoded.fields == {"stream_id": ENTRY_ID, "source_connection": message.connection}
    expected = message.dead_letter
    if expected is not None:  # the entry holds "" for a missing handler or error
        expected = DeadLetter(
            expected.reason, expected.handler or None, expected.error or None, expected.attempts
        )
    assert decoded.dead_letter == expected


@ROUND_TRIP
@given(record_messages())
def test_a_message_without_a_frame_comes_back_from_its_record(message: Message) -> None:
    fields = encode_entry(message)
    assert fields["kind"] == KIND_MESSAGE
    decoded = decode_message(SOURCE, ENTRY_ID, as_stored(fields), frame_decoder)
    assert decoded.connection == SOURCE
    assert (decoded.key, decoded.body, decoded.seq, decoded.received_at) == (
        message.key,
        message.body,
        message.seq,
        message.received_at,
    )
    assert decoded.fields == {
        **message.fields,
        "stream_id": ENTRY_ID,
        "source_connection": message.connection,
    }
    assert decoded.dead_letter == message.dead_letter


@ROUND_TRIP
@given(st.lists(frame_messages() | record_messages(), min_size=1, max_size=8))
def test_a_pack_comes_back_frame_by_frame_in_order(messages: list[Message]) -> None:
    each = [encode_entry(m) for m in messages]
    entry = pack_entry(each)
    assert (entry["kind"], entry["count"]) == (KIND_PACK, str(len(messages)))
    assert unpack_entry(as_stored(entry)) == [as_stored(fields) for fields in each]


@ROUND_TRIP
@given(st.lists(frame_messages() | record_messages(), min_size=1, max_size=8))
def test_the_fast_paths_write_and_read_the_same_entries(messages: list[Message]) -> None:
    # The sink's encode_entry_bytes / pack_entry_bytes and the worker's unpack_frames /
    # decode_packed_message are the documented functions without the conversions.
    each = [encode_entry_bytes(m) for m in messages]
    assert all(isinstance(value, bytes) for fields in each for value in fields.values())
    assert [as_stored(dict(f)) for f in each] == [as_stored(encode_entry(m)) for m in messages]
    for fields, message in zip(each, messages, strict=True):
        assert list(fields) == list(encode_entry(message))  # the same order of fields
    entry = pack_entry_bytes(each)
    assert as_stored(entry) == as_stored(pack_entry([encode_entry(m) for m in messages]))
    stored = as_stored(entry)
    frames = unpack_frames(stored)
    assert [as_stored(dict(f)) for f in frames] == unpack_entry(stored)
    for frame, fields in zip(frames, unpack_entry(stored), strict=True):
        fast = decode_packed_message(SOURCE, ENTRY_ID, frame, frame_decoder)
        slow = decode_message(SOURCE, ENTRY_ID, fields, frame_decoder)
        assert (fast.connection, fast.key, fast.raw, fast.seq, fast.received_at) == (
            slow.connection,
            slow.key,
            slow.raw,
            slow.seq,
            slow.received_at,
        )
        assert (fast.fields, fast.dead_letter) == (slow.fields, slow.dead_letter)


def test_received_at_is_read_as_float_reads_it() -> None:
    # The sink writes repr(float); other producers' spellings read as float() reads them.
    for text in ("1700000000.125", "17e8", "1_700_000_000.5", " 2.5 ", "3"):
        frame = decode_frame(SOURCE, ENTRY_ID, {b"frame": b"x", b"received_at": text.encode()})
        assert frame.received_at == float(text)
    for bad in ("nan", "inf", "-Infinity", "soon", ""):
        with pytest.raises(ValueError, match=r"."):
            decode_frame(SOURCE, ENTRY_ID, {b"frame": b"x", b"received_at": bad.encode()})


def test_an_empty_frame_is_written_as_a_record() -> None:
    # An empty frame cannot be told from "no frame": its record keeps the body.
    fields = encode_entry(Message("up", "k", b"", raw=b"", seq=3, received_at=1.5))
    assert fields["kind"] == KIND_MESSAGE
    decoded = decode_message(SOURCE, ENTRY_ID, as_stored(fields), frame_decoder)
    assert (decoded.body, decoded.key, decoded.seq) == (b"", "k", 3)


# -- other producers ---------------------------------------------------------


def test_only_frame_is_required() -> None:
    frame = decode_frame(SOURCE, ENTRY_ID, {b"frame": b"\x01"})
    assert (frame.data, frame.seq, frame.received_at) == (b"\x01", 0, 1700000000.123)
    decoded = decode_message(SOURCE, ENTRY_ID, {b"frame": b"{}"}, frame_decoder)
    assert decoded.fields == {"stream_id": ENTRY_ID}  # no connection: no source_connection
    assert decoded.dead_letter is None


def test_id_time() -> None:
    assert id_time("²-1") == id_time("١٢-1") == 0.0  # digits, but not ASCII ones
    assert id_time("1700000000123-4") == 1700000000.123
    assert id_time("0-42") == 0.0
    assert id_time("not-an-id") == 0.0


def test_worker_fields_never_fail_on_bad_utf8() -> None:
    assert worker_fields("1-0", {b"connection": b"\xff"}) == {
        "stream_id": "1-0",
        "source_connection": "\ufffd",
    }


# -- malformed entries -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({b"seq": b"1"}, "no frame field"),
        ({b"frame": b"\xff", b"kind": b"text"}, "not UTF-8"),
        ({b"frame": b"x", b"seq": b"one"}, "not a number"),
        ({b"frame": b"x", b"received_at": b"inf"}, "not a finite number"),
        ({b"kind": b"message"}, "no frame field"),
        ({b"frame": b"{", b"kind": b"message"}, "not a JSON line"),
    ],
)
def test_malformed_entries_raise_value_error(fields: dict[bytes, bytes], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decode_message(SOURCE, ENTRY_ID, fields, frame_decoder)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({b"kind": b"pack"}, "without a frames field"),
        ({b"frames": b"\xc1"}, "not a msgpack array"),
        ({b"frames": msgspec.msgpack.encode([1, 2])}, "not a msgpack array"),
        ({b"frames": msgspec.msgpack.encode([])}, "without frames"),
    ],
)
def test_malformed_packs_raise_value_error(fields: dict[bytes, bytes], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        unpack_entry(fields)


field_names = st.sampled_from(
    [b"frame", b"kind", b"seq", b"received_at", b"connection", b"reason", b"attempts", b"frames"]
)
field_values = st.binary(max_size=20) | st.sampled_from(
    [b"text", b"message", b"pack", b"1", b"-1", b"1e400", b"nan", b"{}", b'{"connection":"c"}']
)


@ROUND_TRIP
@given(st.dictionaries(field_names, field_values), st.text(max_size=20))
def test_any_entry_decodes_or_raises_value_error(fields: dict[bytes, bytes], entry_id: str) -> None:
    try:
        message = decode_message(SOURCE, entry_id, fields, frame_decoder)
    except (ValueError, DecodeError):
        pass
    else:
        assert message.fields["stream_id"] == entry_id
        assert math.isfinite(message.received_at)
    with contextlib.suppress(ValueError):
        unpack_entry(fields)
    letter = undecodable_message(SOURCE, entry_id, fields)  # never fails
    assert letter.raw == fields.get(b"frame", b"")
    assert math.isfinite(letter.received_at)
