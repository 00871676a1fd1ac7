"""The built-in codecs: the reference protocol, options, encode, and properties.

Codecs are pure, so nothing here needs an event loop or a socket.
"""

from __future__ import annotations

import struct
from importlib.metadata import entry_points
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsroute import Codec, DecodeError, EncodeError, Frame, Message, Outgoing
from wsroute.codec import (
    BytesCodec,
    JsonCodec,
    StructCodec,
    TextCodec,
    dotted_path,
    encode_outgoing,
    lookup_key,
)
from wsroute.exceptions import ConfigError
from wsroute.validate import convert_or_raise, field_docs

SUBSCRIBE = struct.pack("<i", 2) + b'["first","test"]'


def frame(data: bytes | str, seq: int = 7) -> Frame:
    return Frame("exchange", data, seq, 1700000000.25)


def exchange(**options: Any) -> StructCodec:
    """The reference protocol's codec: an int32 opcode header, then a JSON body."""
    return StructCodec(StructCodec.Options(header="<i", fields=["opcode"], **options))


# --- the reference protocol -------------------------------------------------------------


def test_struct_decodes_a_reference_binary_frame() -> None:
    message = exchange().decode(frame(SUBSCRIBE))
    assert message == Message(
        "exchange",
        2,
        ["first", "test"],
        fields={"opcode": 2},
        raw=SUBSCRIBE,
        seq=7,
        received_at=1700000000.25,
    )


def test_struct_decodes_a_json_text_frame_by_its_type() -> None:
    text = '{"type": "welcome", "user_id": "test1234"}'
    message = exchange().decode(frame(text))
    assert message.key == "welcome"
    assert message.fields == {}
    assert message.body == {"type": "welcome", "user_id": "test1234"}
    assert message.raw == text


def test_struct_text_frames_as_plain_text() -> None:
    message = exchange(text="text").decode(frame("hello"))
    assert (message.key, message.body, message.fields) == (None, "hello", {})


def test_struct_text_key_is_a_dotted_path() -> None:
    codec = exchange(text_key="data.channel")
    assert codec.decode(frame('{"data": {"channel": "book"}}')).key == "book"
    assert codec.decode(frame('{"data": 3}')).key is None


def test_struct_release_frame_with_two_fields() -> None:
    codec = StructCodec(StructCodec.Options(header="<ib", fields=["opcode", "flag"], key="flag"))
    message = codec.decode(frame(struct.pack("<ib", 0, -3)))
    assert message.key == -3
    assert message.fields == {"opcode": 0, "flag": -3}
    assert message.body is None  # nothing after the header


def test_struct_default_field_names_and_key() -> None:
    codec = StructCodec(StructCodec.Options(header=">Hd"))
    message = codec.decode(frame(struct.pack(">Hd", 9, 1.5) + b"{}"))
    assert message.fields == {"f0": 9, "f1": 1.5}
    assert message.key == 9
    assert message.body == {}


def test_struct_header_without_values_has_no_key() -> None:
    codec = StructCodec(StructCodec.Options(header="4x"))
    message = codec.decode(frame(b"\0\0\0\0[1]"))
    assert (message.key, message.fields, message.body) == (None, {}, [1])


@pytest.mark.parametrize(
    ("body", "rest", "expected"),
    [
        ("json", b'{"a": 1}', {"a": 1}),
        ("json", b"", None),
        ("text", "héllo".encode(), "héllo"),
        ("text", b"", ""),
        ("bytes", b"\x00\xff", b"\x00\xff"),
        ("bytes", b"", b""),
    ],
)
def test_struct_body_kinds(body: Any, rest: bytes, expected: Any) -> None:
    message = exchange(body=body).decode(frame(struct.pack("<i", 5) + rest))
    assert message.body == expected
    assert type(message.body) is type(expected)


def test_struct_bytes_field_as_key_is_text_without_padding() -> None:
    codec = StructCodec(StructCodec.Options(header="<6si", fields=["symbol", "n"], key="symbol"))
    message = codec.decode(frame(struct.pack("<6si", b"BTC", 1)))
    assert message.key == "BTC"
    assert message.fields == {"symbol": b"BTC\0\0\0", "n": 1}
    with pytest.raises(DecodeError, match='invalid UTF-8 in key field "symbol"'):
        codec.decode(frame(struct.pack("<6si", b"\xff", 1)))


def test_struct_short_frame() -> None:
    with pytest.raises(DecodeError) as info:
        exchange().decode(frame(b"\x02\x00"))
    assert str(info.value) == "binary frame of 2 bytes is shorter than its 4-byte header"
    with pytest.raises(DecodeError, match="binary frame of 1 byte is"):
        exchange().decode(frame(b"\x02"))


def test_struct_bad_bodies() -> None:
    with pytest.raises(DecodeError, match=r"^invalid JSON body: "):
        exchange().decode(frame(struct.pack("<i", 2) + b'["first",'))
    with pytest.raises(DecodeError, match=r"^invalid UTF-8 in text body at byte 5$"):
        exchange(body="text").decode(frame(struct.pack("<i", 2) + b"a\xff"))
    with pytest.raises(DecodeError, match=r"^invalid JSON: "):
        exchange().decode(frame("{nope"))


# --- json ---------------------------------------------------------------------------------


def test_json_key_from_text_and_binary_frames() -> None:
    codec = JsonCodec()
    text = '{"type": "trade", "price": 1.5}'
    for data in (text, text.encode()):
        message = codec.decode(frame(data))
        assert message.key == "trade"
        assert message.body == {"type": "trade", "price": 1.5}
        assert message.fields == {}
        assert message.raw == data
        assert (message.connection, message.seq, message.received_at) == (
            "exchange",
            7,
            1700000000.25,
        )


def test_json_dotted_key() -> None:
    codec = JsonCodec(JsonCodec.Options(key="data.channel"))
    assert codec.decode(frame('{"data": {"channel": "book"}}')).key == "book"
    assert codec.decode(frame('{"data": {"channel": 4}}')).key == 4


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"type": 3}', 3),
        ('{"type": 2.5}', 2.5),
        ('{"type": true}', True),
        ('{"type": null}', None),
        ('{"type": [1]}', None),
        ('{"type": {"a": 1}}', None),
        ('{"other": 1}', None),
        ("[1, 2]", None),
        ("42", None),
        ('"type"', None),
        ("null", None),
    ],
)
def test_json_key_missing_or_not_scalar_is_none(text: str, key: Any) -> None:
    message = JsonCodec().decode(frame(text))
    assert message.key == key
    assert type(message.key) is type(key)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "invalid JSON: input data was truncated"),
        ("{", "invalid JSON: input data was truncated"),
        ("NaN", "invalid JSON: invalid character (byte 0)"),
        ("1 2", "invalid JSON: trailing characters (byte 3)"),
        (b'"\xff"', "invalid JSON: invalid UTF-8 in a string"),
        ("1e999", "invalid JSON: number out of range"),
        ("\ud800", "invalid JSON: text contains a lone surrogate"),
        ("[" * 100_000, "invalid JSON: nested too deeply"),
    ],
)
def test_json_errors_are_short_decode_errors(data: bytes | str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        JsonCodec().decode(frame(data))
    assert str(info.value) == reason


def test_error_messages_do_not_repeat_a_huge_frame() -> None:
    huge = '{"type": "' + "x" * 1_000_000
    for codec in (JsonCodec(), exchange()):
        with pytest.raises(DecodeError) as info:
            codec.decode(frame(huge))
        assert len(str(info.value)) < 200
    with pytest.raises(DecodeError) as info:
        exchange().decode(frame(struct.pack("<i", 1) + huge.encode()))
    assert len(str(info.value)) < 200


def test_dotted_path_and_lookup_key() -> None:
    assert dotted_path("type") == ("type",)
    assert dotted_path("data.channel") == ("data", "channel")
    for bad in ("", ".", "a.", ".a", "a..b"):
        with pytest.raises(ValueError, match="invalid dotted path"):
            dotted_path(bad)
    parts = dotted_path("a.b")
    assert lookup_key({"a": {"b": "x"}}, parts) == "x"
    assert lookup_key({"a": {"b": False}}, parts) is False
    assert lookup_key({"a": {"b": [1]}}, parts) is None
    assert lookup_key({"a": [{"b": 1}]}, parts) is None
    assert lookup_key({"a": None}, parts) is None
    assert lookup_key("a", parts) is None


# --- text and bytes -----------------------------------------------------------------------


def test_text_codec() -> None:
    codec = TextCodec()
    assert codec.decode(frame("héllo")).body == "héllo"
    message = codec.decode(frame("héllo".encode()))
    assert (message.key, message.body, message.fields) == (None, "héllo", {})
    with pytest.raises(DecodeError, match=r"^invalid UTF-8 in binary frame at byte 1$"):
        codec.decode(frame(b"a\xff"))


def test_bytes_codec() -> None:
    codec = BytesCodec()
    message = codec.decode(frame(b"\x00\xff"))
    assert (message.key, message.body, message.fields, message.raw) == (
        None,
        b"\x00\xff",
        {},
        b"\x00\xff",
    )
    text_message = codec.decode(frame("é"))
    assert text_message.body == "é".encode()
    assert text_message.raw == "é"
    with pytest.raises(DecodeError, match="lone surrogate"):
        codec.decode(frame("a\udc80"))


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "table", "issue"),
    [
        (StructCodec.Options, {"header": "<q!"}, 'codecs.x.header: invalid struct format "<q!"'),
        (StructCodec.Options, {}, "codecs.x.header: missing required key"),
        (
            StructCodec.Options,
            {"header": "<ib", "fields": ["opcode"]},
            'codecs.x.fields: header "<ib" unpacks 2 values, but 1 name is given',
        ),
        (
            StructCodec.Options,
            {"header": "<i", "fields": ["a", "b"]},
            'codecs.x.fields: header "<i" unpacks 1 value, but 2 names are given',
        ),
        (
            StructCodec.Options,
            {"header": "<ii", "fields": ["a", "a"]},
            'codecs.x.fields: "a" is named twice',
        ),
        (
            StructCodec.Options,
            {"header": "<i", "fields": [""]},
            "codecs.x.fields: a field name must not be empty",
        ),
        (
            StructCodec.Options,
            {"header": "<i", "fields": ["opcode"], "key": "opcod"},
            'codecs.x.key: "opcod" is not a header field (fields: opcode) (did you mean "opcode"?)',
        ),
        (
            StructCodec.Options,
            {"header": "<i", "text_key": "a..b"},
            'codecs.x.text_key: invalid dotted path "a..b": '
            "it needs names separated by single dots",
        ),
        (
            StructCodec.Options,
            {"header": "<i", "body": "jsn"},
            'codecs.x.body: expected one of "json" | "text" | "bytes", got "jsn" '
            '(did you mean "json"?)',
        ),
        (
            JsonCodec.Options,
            {"key": ""},
            'codecs.x.key: invalid dotted path "": it needs names separated by single dots',
        ),
        (JsonCodec.Options, {"kye": "type"}, 'codecs.x.kye: unknown key (did you mean "key"?)'),
        (TextCodec.Options, {"key": "type"}, "codecs.x.key: unknown key"),
    ],
)
def test_invalid_options_name_their_key(cls: type, table: dict[str, Any], issue: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_or_raise(cls, table, "codecs.x")
    assert [str(i) for i in info.value.issues] == [issue]


def test_options_from_toml_values() -> None:
    options = convert_or_raise(
        StructCodec.Options,
        {"header": "<i", "fields": ["opcode"], "body": "json", "key": "opcode", "text": "text"},
        "codecs.exchange",
    )
    codec = StructCodec(options)
    assert codec.decode(frame(SUBSCRIBE)).key == 2
    assert convert_or_raise(JsonCodec.Options, {}, "codecs.events") == JsonCodec.Options()


def test_invalid_options_fail_at_construction_too() -> None:
    with pytest.raises(ValueError, match=r'^header: invalid struct format "<q!"$'):
        StructCodec.Options(header="<q!")
    with pytest.raises(ValueError, match=r"^key: "):
        JsonCodec.Options(key="a..b")


@pytest.mark.parametrize("cls", [JsonCodec, StructCodec, TextCodec, BytesCodec])
def test_options_are_documented(cls: Any) -> None:
    for doc in field_docs(cls.Options):
        assert doc.doc, doc.name
    assert cls.__doc__


def test_codecs_fit_the_protocol_and_are_entry_points() -> None:
    codecs: list[object] = [JsonCodec(), exchange(), TextCodec(), BytesCodec()]
    assert all(isinstance(c, Codec) for c in codecs)
    found = {ep.name: ep.load() for ep in entry_points(group="wsroute.codecs")}
    assert found["json"] is JsonCodec
    assert found["struct"] is StructCodec
    assert found["text"] is TextCodec
    assert found["bytes"] is BytesCodec


# --- encode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outgoing", "expected"),
    [
        (
            Outgoing.build(json={"role": "admin", "user_id": "test1234"}),
            '{"role":"admin","user_id":"test1234"}',
        ),
        (Outgoing.build(struct=("<i", [2]), json=["first", "test"]), SUBSCRIBE),
        (Outgoing.build(struct=("<ib", [0, 0])), struct.pack("<ib", 0, 0)),
        (Outgoing.build(struct=("<i", [2]), json=None, has_json=True), b"\x02\0\0\0null"),
        (Outgoing.build(json=None, has_json=True), "null"),
        (Outgoing.build(text="ping"), "ping"),
        (Outgoing.build(raw=b"\x01\x02"), b"\x01\x02"),
        (Outgoing(json=[1]), "[1]"),  # built by hand, without has_json
    ],
)
def test_encode(outgoing: Outgoing, expected: bytes | str) -> None:
    assert encode_outgoing(outgoing) == expected
    assert type(encode_outgoing(outgoing)) is type(expected)
    for codec in (JsonCodec(), exchange(), TextCodec(), BytesCodec()):
        assert codec.encode(outgoing) == expected


@pytest.mark.parametrize(
    ("outgoing", "match"),
    [
        (Outgoing.build(struct=("<i", [1, 2])), "cannot pack struct '<i': "),
        (Outgoing.build(struct=("<i", ["a"])), "cannot pack struct '<i': "),
        (Outgoing.build(struct=("<b", [300])), "cannot pack struct '<b': "),
        (Outgoing.build(struct=("<q!", [1])), "cannot pack struct '<q!': "),
        (Outgoing.build(json={"a": object()}), "cannot encode JSON: "),
        (Outgoing.build(json={(1, 2): 3}), "cannot encode JSON: "),
        (Outgoing(text="a", raw=b"b"), "give exactly one of"),
        (Outgoing(), "give exactly one of"),
    ],
)
def test_encode_errors(outgoing: Outgoing, match: str) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_outgoing(outgoing)


# --- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
int32 = st.integers(-(2**31), 2**31 - 1)
# Surrogates included: a str handed to a codec from Python may hold them.
any_text = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters())

ROUND_TRIP = settings(max_examples=300, deadline=None)


@ROUND_TRIP
@given(json_values)
def test_json_round_trip(value: Any) -> None:
    data = encode_outgoing(Outgoing.build(json=value, has_json=True))
    assert isinstance(data, str)
    for raw in (data, data.encode()):
        assert JsonCodec().decode(frame(raw)).body == value


@ROUND_TRIP
@given(st.text(min_size=1), json_values | st.text())
def test_json_key_round_trip(key: str, scalar: Any) -> None:
    data = encode_outgoing(Outgoing.build(json={"data": {"k": scalar}}))
    message = JsonCodec(JsonCodec.Options(key="data.k")).decode(frame(data))
    expected = scalar if isinstance(scalar, str | int | float) else None
    assert message.key == expected
    data = encode_outgoing(Outgoing.build(json={"type": key}))
    assert JsonCodec().decode(frame(data)).key == key


@ROUND_TRIP
@given(int32, json_values)
def test_struct_json_round_trip(opcode: int, value: Any) -> None:
    data = encode_outgoing(Outgoing.build(struct=("<i", [opcode]), json=value, has_json=True))
    assert isinstance(data, bytes)
    message = exchange().decode(frame(data))
    assert message.key == opcode
    assert message.fields == {"opcode": opcode}
    assert message.body == value


@ROUND_TRIP
@given(st.text())
def test_text_round_trip(text: str) -> None:
    data = encode_outgoing(Outgoing.build(text=text))
    assert TextCodec().decode(frame(data)).body == text
    assert TextCodec().decode(frame(text.encode())).body == text


@ROUND_TRIP
@given(st.binary())
def test_bytes_round_trip(raw: bytes) -> None:
    data = encode_outgoing(Outgoing.build(raw=raw))
    assert BytesCodec().decode(frame(data)).body == raw


def every_codec() -> list[Codec]:
    """Every built-in codec, in several option variants."""
    return [
        JsonCodec(),
        JsonCodec(JsonCodec.Options(key="data.channel")),
        exchange(),
        exchange(text="text"),
        exchange(body="text", text_key="a.b.c"),
        StructCodec(StructCodec.Options(header=">Hd", body="bytes")),
        StructCodec(StructCodec.Options(header="<4sb", fields=["sym", "n"], key="sym")),
        StructCodec(StructCodec.Options(header="?e", body="text", key="f1")),
        StructCodec(StructCodec.Options(header="4x")),
        TextCodec(),
        BytesCodec(),
    ]


CODECS = every_codec()
GARBAGE = settings(max_examples=400, deadline=None)


def decode_or_decode_error(data: bytes | str) -> None:
    """Every codec decodes ``data`` into a Message or raises DecodeError, nothing else."""
    for codec in CODECS:
        message: Message | None = None
        try:
            message = codec.decode(frame(data))
        except DecodeError as exc:
            reason = str(exc)
        if message is None:
            assert 0 < len(reason) < 200
        else:
            assert isinstance(message, Message)
            assert message.raw is data
            assert message.key is None or isinstance(message.key, str | int | float)


@GARBAGE
@given(st.binary())
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    decode_or_decode_error(data)


@GARBAGE
@given(any_text)
def test_arbitrary_text_raises_only_decode_error(data: str) -> None:
    decode_or_decode_error(data)


@GARBAGE
@given(int32, json_values, st.data())
def test_damaged_frames_raise_only_decode_error(opcode: int, value: Any, data: Any) -> None:
    """Near-valid frames (a real header and JSON, cut or altered) reach the deeper branches."""
    good = encode_outgoing(Outgoing.build(struct=("<i", [opcode]), json=value, has_json=True))
    assert isinstance(good, bytes)
    cut = data.draw(st.integers(0, len(good)))
    damaged = bytearray(good[:cut])
    if damaged:
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    decode_or_decode_error(bytes(damaged))
    decode_or_decode_error(good[4:cut].decode("utf-8", "surrogateescape"))
