"""Lazy bodies: the key is read without building the body; the body is built on first read.

Unit tests on the built-in codecs and the record format, then the daemon end to
end: a codec with ``validate = false`` lets an invalid body through, the
handler that reads it fails (retries, then a ``handler_error`` dead letter that
keeps the raw frame), a handler that forwards the frame never builds it, and
``wsroute replay`` decodes the dead letter's frame again.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from test_replay import WSROUTE, lines, summary

from wsroute import DecodeError, Frame, JsonCodec, StructCodec
from wsroute.codec import LAZY_FROM
from wsroute.plugins.websocket import outgoing_for
from wsroute.records import encode_record, parse_record, record
from wsroute.testing import ScriptedUpstream, run_daemon

BOOK: dict[str, Any] = {
    "type": "book",
    "data": {"channel": "eth"},
    "bids": [[100.0 + i, i * 1.5] for i in range(120)],
}
BOOK_TEXT = json.dumps(BOOK)
assert len(BOOK_TEXT) >= LAZY_FROM


def frame(data: bytes | str, seq: int = 1) -> Frame:
    return Frame("up", data, seq, 1.5)


def struct_codec(**options: Any) -> StructCodec:
    return StructCodec(StructCodec.Options(header="<i", fields=["opcode"], **options))


# -- the json codec ---------------------------------------------------------


def test_a_large_json_frame_is_routed_by_its_key_without_building_the_body() -> None:
    message = JsonCodec().decode(frame(BOOK_TEXT))
    assert message.key == "book"
    assert not message.body_built
    assert message.body_json == BOOK_TEXT
    assert message.body == BOOK
    assert message.body_built
    assert message.body is message.body  # built once, shared


def test_a_small_json_frame_is_decoded_at_once() -> None:
    message = JsonCodec().decode(frame('{"type": "tick", "n": 1}'))
    assert message.body_built
    assert (message.key, message.body) == ("tick", {"type": "tick", "n": 1})


@pytest.mark.parametrize(
    ("path", "key"),
    [("data.channel", "eth"), ("data.missing", None), ("missing.deeper", None), ("bids", None)],
)
def test_a_dotted_key_is_read_from_a_lazy_frame_as_from_a_decoded_one(path: str, key: Any) -> None:
    lazy = JsonCodec(JsonCodec.Options(key=path)).decode(frame(BOOK_TEXT))
    assert lazy.key == key
    assert not lazy.body_built


def test_a_large_frame_that_is_not_an_object_is_decoded_whole() -> None:
    text = json.dumps(list(range(400)))
    message = JsonCodec().decode(frame(text))
    assert (message.key, message.body) == (None, list(range(400)))
    nested = JsonCodec(JsonCodec.Options(key="data.channel")).decode(
        frame(json.dumps({"data": "flat", "pad": "x" * LAZY_FROM}))
    )
    assert nested.key is None


@pytest.mark.parametrize("validate", [True, False])
def test_a_large_frame_of_invalid_json_is_a_decode_error_either_way(validate: bool) -> None:
    codec = JsonCodec(JsonCodec.Options(validate=validate))
    with pytest.raises(DecodeError, match="invalid JSON"):
        codec.decode(frame(BOOK_TEXT[:-1]))


def test_invalid_utf8_in_a_skipped_string_is_a_decode_error_when_validating() -> None:
    data = ('{"type": "book", "pad": "' + "x" * LAZY_FROM).encode() + b'\xff"}'
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        JsonCodec().decode(frame(data))
    trusted = JsonCodec(JsonCodec.Options(validate=False)).decode(frame(data))
    assert trusted.key == "book"
    assert trusted.body_json is None
    with pytest.raises(DecodeError, match="invalid JSON"):
        _ = trusted.body


# -- the struct codec -------------------------------------------------------

BODY = json.dumps(BOOK).encode()
GOOD = struct.pack("<i", 7) + BODY
BAD = struct.pack("<i", 7) + BODY[:-1]  # the body's last brace cut off


def test_a_struct_frame_keeps_its_validated_body_as_json_text() -> None:
    message = struct_codec().decode(frame(GOOD))
    assert (message.key, message.fields) == (7, {"opcode": 7})
    assert not message.body_built
    assert message.body_json == BODY
    assert message.body == BOOK


def test_an_invalid_struct_body_is_a_decode_error_by_default() -> None:
    with pytest.raises(DecodeError, match="invalid JSON body"):
        struct_codec().decode(frame(BAD))


def test_with_validate_false_an_invalid_body_fails_when_read() -> None:
    codec = struct_codec(validate=False)
    message = codec.decode(frame(BAD))
    assert message.key == 7
    assert message.body_json is None
    for _ in range(2):  # every read fails the same way
        with pytest.raises(DecodeError, match="invalid JSON body"):
            _ = message.body
    # Looking at it does not build it (nor fail): repr shows the body unbuilt.
    assert "body=<unbuilt>" in repr(message)
    assert not message.body_built
    assert message == codec.decode(frame(BAD))
    assert not message.body_built


def test_a_large_bytes_body_is_sliced_on_first_read() -> None:
    data = struct.pack("<i", 3) + bytes(range(256)) * 8
    message = struct_codec(body="bytes").decode(frame(data))
    assert not message.body_built
    assert message.body == data[4:]


def test_a_copy_of_a_lazy_message_stays_lazy_and_builds_the_same_body() -> None:
    message = struct_codec().decode(frame(GOOD))
    copy = message.replace(key=8)
    assert not copy.body_built
    assert copy.body == BOOK
    assert copy.key == 8
    assert not message.body_built
    assert message == struct_codec().decode(frame(GOOD))
    changed = message.replace(body={"other": 1})
    assert (changed.body, changed.body_json) == ({"other": 1}, None)


# -- the record format ------------------------------------------------------


def test_a_validated_body_is_written_verbatim_without_being_built() -> None:
    message = struct_codec().decode(frame(GOOD))
    line = encode_record(message)
    assert not message.body_built
    assert BODY in line
    assert json.loads(line)["body"] == BOOK
    assert parse_record(line).body == BOOK
    # record() without verbatim stays plain data, for any JSON encoder
    assert json.dumps(record(message))


def test_a_json_body_that_spans_lines_is_encoded_again() -> None:
    text = json.dumps(BOOK, indent=2)
    message = JsonCodec().decode(frame(text))
    line = encode_record(message)
    assert line.count(b"\n") == 1
    assert json.loads(line)["body"] == BOOK


def test_a_body_that_cannot_be_built_is_recorded_as_its_frame() -> None:
    message = struct_codec(validate=False).decode(frame(BAD))
    out = json.loads(encode_record(message))
    assert out["frame"] is True
    assert base64.b64decode(out["body"]) == BAD
    assert parse_record(encode_record(message)).raw == BAD
    assert msgspec.json.decode(encode_record(message))["key"] == 7


# -- the daemon, end to end --------------------------------------------------

DAEMON = """
[daemon]
log_level = "warning"
dead_letter = "dlq"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "exchange"

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
validate = false

[routes.all]
handlers = ["reader", "archive"]

[handlers.reader]
plugin = "log"
level = "debug"
retries = 1

[handlers.archive]
plugin = "jsonl"
path = "${WSROUTE_TMP}/archive.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""

REPLAY = """
[daemon]
log_level = "warning"
dead_letter = "dlq"

[connections.up]
url = "ws://127.0.0.1:1/"
codec = "exchange"

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
validate = {validate}

[routes.all]
handlers = ["reader"]

[handlers.reader]
plugin = "{reader}"
path = "{folder}/replayed.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead-again.jsonl"
"""


def run_lazy_daemon(tmp_path: Path) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}

    async def main() -> None:
        upstream = ScriptedUpstream(frames=[GOOD, BAD])
        async with run_daemon(DAEMON, upstream=upstream, tmp_path=tmp_path) as daemon:
            await daemon.wait_until(
                lambda: (
                    daemon.stats("dlq")["handled"] == 1 and daemon.stats("archive")["handled"] == 2
                )
            )
            for name in ("reader", "archive", "dlq"):
                stats[name] = daemon.stats(name)

    anyio.run(main)
    return stats


def test_a_body_that_fails_to_build_fails_the_handler_that_reads_it(tmp_path: Path) -> None:
    stats = run_lazy_daemon(tmp_path)
    reader = stats["reader"]
    assert (reader["received"], reader["handled"], reader["dead_lettered"]) == (2, 1, 1)
    assert (reader["failures"], reader["retries"]) == (2, 1)
    # the archive took both: the good one as JSON, the bad one as its frame
    good, bad = lines(tmp_path / "archive.jsonl")
    assert good["body"] == BOOK
    assert "frame" not in good
    assert bad["frame"] is True
    assert base64.b64decode(bad["body"]) == BAD
    (letter,) = lines(tmp_path / "dead.jsonl")
    assert (letter["reason"], letter["handler"], letter["attempts"]) == (
        "handler_error",
        "reader",
        2,
    )
    assert "invalid JSON body" in letter["error"]
    assert letter["frame"] is True
    assert base64.b64decode(letter["body"]) == BAD


def replay(tmp_path: Path, *, validate: bool, reader: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "replay.toml"
    text = REPLAY.format(validate=str(validate).lower(), reader=reader, folder=tmp_path)
    if reader != "jsonl":
        text = text.replace(f'path = "{tmp_path}/replayed.jsonl"\n', "")
    config.write_text(text)
    return subprocess.run(
        [WSROUTE, "replay", "-c", str(config), str(tmp_path / "dead.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_replay_decodes_the_dead_letters_frame_again(tmp_path: Path) -> None:
    run_lazy_daemon(tmp_path)
    # A handler that does not read the body takes the frame as it is.
    forwarded = replay(tmp_path, validate=False, reader="jsonl")
    assert forwarded.returncode == 0, forwarded.stderr
    assert summary(forwarded).startswith("1 read, 1 handled")
    (again,) = lines(tmp_path / "replayed.jsonl")
    assert base64.b64decode(again["body"]) == BAD
    # Validating now, the frame is a decode error: dead-lettered again, exit 1.
    checked = replay(tmp_path, validate=True, reader="log")
    assert checked.returncode == 1, checked.stderr
    (still,) = lines(tmp_path / "dead-again.jsonl")
    assert still["reason"] == "decode_error"
    assert base64.b64decode(still["body"]) == BAD


def test_the_websocket_sink_forwards_a_validated_body_without_building_it() -> None:
    message = struct_codec().decode(frame(GOOD))
    assert outgoing_for(message, "frame").raw == GOOD
    sent = outgoing_for(message, "body")
    assert sent.text is not None
    assert json.loads(sent.text) == BOOK
    assert not message.body_built
