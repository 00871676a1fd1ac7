"""The built-in handler plugins (jsonl, log, reply) and the plugin author's test kit.

Real files in tmp_path, /dev/full for a full disk, real subprocesses for a
file-size limit and for a SIGKILL; no mocks.
"""

from __future__ import annotations

import base64
import errno
import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from wsroute import ConfigError, DeadLetter, Message, Outgoing, SendError, Unavailable
from wsroute.plugins.jsonl import JsonlHandler, encode_record, parse_record, record
from wsroute.plugins.log import shorten
from wsroute.testing import RecordingContext, build_codec, build_handler, decode, message


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data
    return data.splitlines()


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --------------------------------------------------------------------------- jsonl: format


def test_record_shape_json_body() -> None:
    msg = Message(
        "exchange", 2, {"a": [1, 2]}, fields={"opcode": 2}, seq=7, received_at=1700000000.25
    )
    assert encode_record(msg) == (
        b'{"connection":"exchange","key":2,"seq":7,"received_at":1700000000.25,'
        b'"fields":{"opcode":2},"body":{"a":[1,2]}}\n'
    )


def test_record_text_and_bytes_bodies() -> None:
    assert record(Message("c", None, "hello"))["body"] == "hello"
    rec = record(Message("c", None, b"\x00\xffbin"))
    assert rec["body"] == base64.b64encode(b"\x00\xffbin").decode()
    assert rec["body_encoding"] == "base64"
    assert "body_encoding" not in record(Message("c", None, {"x": 1}))
    # bytes nested in a JSON body are base64 text too
    line = encode_record(Message("c", None, {"blob": b"\x01\x02"}))
    assert json.loads(line)["body"] == {"blob": "AQI="}


def test_record_dead_letter_fields() -> None:
    dead = DeadLetter(reason="handler_error", handler="archive", error="disk full", attempts=4)
    rec = json.loads(encode_record(Message("c", "k", {"x": 1}, dead_letter=dead)))
    assert rec["reason"] == "handler_error"
    assert rec["handler"] == "archive"
    assert rec["error"] == "disk full"
    assert rec["attempts"] == 4
    assert list(rec) == [
        "connection",
        "key",
        "seq",
        "received_at",
        "fields",
        "body",
        "reason",
        "handler",
        "error",
        "attempts",
    ]


ROUND_TRIP = [
    Message("exchange", 2, {"a": [1, 2.5, None, True]}, fields={"opcode": 2}, seq=3),
    Message("events", "trade", "plain text", seq=1, received_at=1.5),
    Message("raw", None, b"\x00\x01\xfe", seq=9, received_at=2.0),
    Message(  # an undecodable frame: the body is the frame, and comes back as raw too
        "exchange",
        None,
        b"\xff not decodable",
        raw=b"\xff not decodable",
        seq=4,
        dead_letter=DeadLetter("decode_error", None, "invalid JSON", 0),
    ),
    Message(
        "events",
        None,
        '{"half": ',
        raw='{"half": ',
        seq=5,
        dead_letter=DeadLetter("decode_error", None, "truncated", 0),
    ),
    Message(
        "exchange",
        True,
        ["x"],
        dead_letter=DeadLetter("timeout", "archive", None, 3),
        received_at=1700000000.123456,
    ),
]


@pytest.mark.parametrize("original", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_parse_record_round_trip(original: Message) -> None:
    line = encode_record(original)
    assert parse_record(line) == original
    assert parse_record(line.decode()) == original


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    body=json_values | st.binary(),
    key=st.none() | st.text(max_size=5) | st.integers(-1000, 1000),
    seq=st.integers(0, 2**40),
)
def test_parse_record_round_trip_property(body: Any, key: Any, seq: int) -> None:
    original = Message("c", key, body, fields={"f": [1]}, seq=seq, received_at=12.5)
    assert parse_record(encode_record(original)) == original


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"connection":"c","bo', "not a JSON line"),
        (b"[1, 2]", "not a wsroute record"),
        (b'{"key": 1}', "not a wsroute record"),
        (b'{"connection":"c","body":"@@","body_encoding":"base64"}', "not valid base64"),
        (b'{"connection":"c","body":"x","body_encoding":"rot13"}', "unknown body_encoding"),
    ],
)
def test_parse_record_errors(line: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_record(line)


# --------------------------------------------------------------------------- jsonl: file


@pytest.mark.anyio
async def test_jsonl_appends_lines_and_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    handler = build_handler("jsonl", {"path": str(path), "mode": "0600"})
    await handler.start()
    assert path.exists()
    assert path.stat().st_mode & 0o777 == 0o600
    originals = [message({"n": n}, key="tick", seq=n, received_at=float(n)) for n in range(1, 4)]
    for msg in originals:
        await handler.handle(msg)
        # durable on return: the line is in the file, not in a buffer
        assert parse_record(lines_of(path)[-1]) == msg
    await handler.stop()
    assert [parse_record(line) for line in lines_of(path)] == originals


@pytest.mark.anyio
async def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    path.write_bytes(b'{"connection":"old"}\n')
    handler = build_handler("jsonl", {"path": str(path)})
    await handler.start()
    await handler.handle(message("new"))
    await handler.stop()
    assert lines_of(path)[0] == b'{"connection":"old"}'
    assert parse_record(lines_of(path)[1]).body == "new"


@pytest.mark.anyio
async def test_jsonl_closes_a_torn_line_at_start(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    path.write_bytes(b'{"connection":"a","key":1}\n{"connection":"b","ke')
    handler = build_handler("jsonl", {"path": str(path)}, ctx=RecordingContext("archive"))
    with capture_logs() as logs:
        await handler.start()
    await handler.handle(message("after", seq=5))
    await handler.stop()
    lines = lines_of(path)
    assert lines[:2] == [b'{"connection":"a","key":1}', b'{"connection":"b","ke']
    assert parse_record(lines[2]).body == "after"
    assert [e["event"] for e in logs] == ["jsonl_torn_line_closed"]
    assert logs[0]["handler"] == "archive"


@pytest.mark.anyio
async def test_jsonl_missing_folder_fails_at_start(tmp_path: Path) -> None:
    handler = build_handler("jsonl", {"path": str(tmp_path / "missing" / "a.jsonl")})
    with pytest.raises(FileNotFoundError, match=r'the folder ".*missing" does not exist'):
        await handler.start()


def test_jsonl_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"handlers.test.mode: must be octal permissions"):
        build_handler("jsonl", {"path": "/tmp/x", "mode": "rw-r--r--"})
    with pytest.raises(ConfigError, match=r"handlers.test.path: missing required key"):
        build_handler("jsonl", {})


@pytest.mark.anyio
async def test_jsonl_full_disk_is_an_outage_and_writes_nothing() -> None:
    handler = build_handler("jsonl", {"path": "/dev/full"})
    await handler.start()
    with pytest.raises(Unavailable, match=r'cannot append to "/dev/full"') as caught:
        await handler.handle(message("lost"))
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    await handler.stop()


def test_jsonl_file_size_limit_leaves_no_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    done = run_python(
        """
        import os, resource, signal, sys
        import anyio
        from wsroute.testing import build_handler, message

        path = sys.argv[1]
        # Without this the kernel kills us with SIGXFSZ instead of returning EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        async def main():
            handler = build_handler("jsonl", {"path": path})
            await handler.start()
            await handler.handle(message("first", seq=1))
            size = os.path.getsize(path)
            # room for a short line, not for a long one: its write stops halfway
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, resource.RLIM_INFINITY))
            try:
                await handler.handle(message("x" * 1000, seq=2))
            except OSError as exc:
                print("result errno", exc.errno, "grew", os.path.getsize(path) - size)
            await handler.handle(message("third", seq=3))
            await handler.stop()

        anyio.run(main)
        """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("result ")]
    assert results == [f"result errno {errno.EFBIG} grew 0"]
    records = [parse_record(line) for line in lines_of(path)]
    assert [(r.seq, r.body) for r in records] == [(1, "first"), (3, "third")]


@pytest.mark.anyio
async def test_jsonl_reopens_a_rotated_or_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    rotated = tmp_path / "archive.jsonl.1"
    ctx = RecordingContext("archive")
    handler = build_handler("jsonl", {"path": str(path)}, ctx=ctx)
    await handler.start()
    await handler.handle(message("one", seq=1))
    path.rename(rotated)
    await anyio.sleep(1.1)  # rotation is checked at most once a second
    with capture_logs() as logs:
        await handler.handle(message("two", seq=2))
    assert [e["event"] for e in logs] == ["jsonl_reopened"]
    assert [parse_record(x).body for x in lines_of(rotated)] == ["one"]
    assert [parse_record(x).body for x in lines_of(path)] == ["two"]

    path.unlink()
    await anyio.sleep(1.1)
    await handler.handle(message("three", seq=3))
    await handler.stop()
    assert [parse_record(x).body for x in lines_of(path)] == ["three"]


@pytest.mark.anyio
async def test_jsonl_fsync_with_concurrent_workers(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    handler = build_handler("jsonl", {"path": str(path), "fsync": True})
    await handler.start()

    async def worker(first: int) -> None:
        for seq in range(first, first + 10):
            await handler.handle(message({"seq": seq}, seq=seq))

    async with anyio.create_task_group() as tg:
        for first in (1, 11, 21):
            tg.start_soon(worker, first)
    await handler.stop()
    assert sorted(parse_record(line).seq for line in lines_of(path)) == list(range(1, 31))


def test_jsonl_lines_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    count = 500
    done = run_python(
        """
        import os, signal, sys
        import anyio
        from wsroute.testing import build_handler, message

        async def main():
            handler = build_handler("jsonl", {"path": sys.argv[1]})
            await handler.start()
            for seq in range(1, int(sys.argv[2]) + 1):
                await handler.handle(message({"seq": seq, "pad": "p" * 100}, seq=seq))
            # no stop(), no flush, no exit handlers
            os.kill(os.getpid(), signal.SIGKILL)

        anyio.run(main)
        """,
        str(path),
        str(count),
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [parse_record(line).seq for line in lines_of(path)] == list(range(1, count + 1))


def test_jsonl_is_listed_with_the_public_api_only() -> None:
    source = Path(sys.modules[JsonlHandler.__module__].__file__ or "").read_text()
    assert "from wsroute import " in source
    imported = set(re.findall(r"^from (wsroute\.[\w.]+) import", source, re.MULTILINE))
    assert imported <= {"wsroute.records"}  # public modules of the plugin API only
    assert "from ." not in source


# --------------------------------------------------------------------------- log


@pytest.mark.anyio
async def test_log_handler_writes_one_structured_line() -> None:
    ctx = RecordingContext("printer")
    handler = build_handler("log", {"level": "warning", "max_body": 5}, ctx=ctx)
    with capture_logs() as logs:
        await handler.handle(message("abcdefghij", key="k", connection="c", seq=3, fields={"f": 1}))
    assert logs == [
        {
            "event": "message",
            "log_level": "warning",
            "handler": "printer",
            "connection": "c",
            "key": "k",
            "seq": 3,
            "fields": {"f": 1},
            "body": "abcde… (5 more)",
        }
    ]


@pytest.mark.anyio
async def test_log_handler_defaults_and_no_body() -> None:
    with capture_logs() as logs:
        await build_handler("log").handle(message({"a": 1}, key=2))
        await build_handler("log", {"max_body": 0}).handle(message("secret-ish", key=2))
    assert logs[0]["log_level"] == "info"
    assert logs[0]["body"] == '{"a":1}'
    assert "body" not in logs[1]


def test_shorten() -> None:
    assert shorten("short", 10) == "short"
    assert shorten(b"\x00ab", 50) == "b'\\x00ab'"
    assert shorten([1, 2, 3], 3) == "[1,… (4 more)"
    assert shorten({"x": object()}, 100).startswith('{"x":"<object object')


def test_log_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r'handlers.test.level: expected one of .*"info"'):
        build_handler("log", {"level": "loud"})


# --------------------------------------------------------------------------- reply


@pytest.mark.anyio
async def test_reply_sends_struct_and_json_on_the_message_connection() -> None:
    ctx = RecordingContext("ack")
    handler = build_handler(
        "reply", {"struct": {"format": "<i", "values": [2]}, "json": ["first", "test"]}, ctx=ctx
    )
    await handler.handle(message({"x": 1}, connection="exchange"))
    assert ctx.sent == [
        ("exchange", Outgoing.build(struct=("<i", [2]), json=["first", "test"])),
    ]


@pytest.mark.anyio
async def test_reply_to_another_connection_text_and_raw() -> None:
    ctx = RecordingContext("ack", connections=["control"])
    await build_handler("reply", {"connection": "control", "text": "pong"}, ctx=ctx).handle(
        message("ping", connection="exchange")
    )
    await build_handler("reply", {"connection": "control", "raw": "02 00"}, ctx=ctx).handle(
        message("ping")
    )
    assert ctx.sent == [
        ("control", Outgoing.build(text="pong")),
        ("control", Outgoing.build(raw=b"\x02\x00")),
    ]
    # without `connection`, the reply goes back where the message came from: unknown here
    with pytest.raises(SendError, match='unknown connection "exchange"'):
        await build_handler("reply", {"json": {"op": "pong"}}, ctx=ctx).handle(
            message("ping", connection="exchange")
        )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, r"handlers.test: give exactly one of json, struct"),
        ({"text": "a", "raw": "00"}, r"handlers.test: give exactly one of .*; got text, raw"),
        (
            {"struct": {"format": "<i", "values": ["x"]}},
            r"handlers.test.struct: struct: cannot pack \['x'\] with format '<i'",
        ),
        ({"raw": "zz"}, r"handlers.test.raw: expected hex bytes"),
    ],
)
def test_reply_options_are_validated(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        build_handler("reply", options)


# --------------------------------------------------------------------------- testing kit


@pytest.mark.anyio
async def test_recording_context_subscriptions_and_emit() -> None:
    ctx = RecordingContext("book")
    await ctx.subscribe("exchange", "book:btc", json={"op": "sub", "ch": "btc"})
    await ctx.subscribe("exchange", "book:btc", json={"op": "sub", "ch": "btc2"})
    assert ctx.subscriptions == {
        ("exchange", "book:btc"): Outgoing.build(json={"op": "sub", "ch": "btc2"})
    }
    assert len(ctx.sent) == 2  # subscribing sends at once, as when connected
    await ctx.unsubscribe("exchange", "book:btc")
    assert ctx.subscriptions == {}
    derived = message({"x": 1}, key="derived")
    await ctx.emit(derived)
    assert ctx.emitted == [derived]
    with pytest.raises(ValueError, match="give exactly one of"):
        await ctx.send("exchange", text="a", raw=b"b")
    assert ctx.name == "book"


def test_message_helper_defaults() -> None:
    msg = message({"a": 1}, key="k")
    assert (msg.connection, msg.key, msg.seq, msg.fields, msg.raw) == ("test", "k", 1, {}, b"")
    assert msg.received_at > 1_600_000_000


def test_decode_through_a_codec_by_name_and_instance() -> None:
    msg = decode("json", '{"type": "trade", "px": 1.5}', connection="exchange", seq=7)
    assert (msg.connection, msg.key, msg.seq) == ("exchange", "trade", 7)
    assert msg.body == {"type": "trade", "px": 1.5}
    by_path = decode("json", '{"data": {"ch": "x"}}', options={"key": "data.ch"})
    assert by_path.key == "x"
    codec = build_codec("json")
    assert decode(codec, '{"type": 3}').key == 3
    with pytest.raises(TypeError):
        decode(codec, "{}", options={"key": "x"})
